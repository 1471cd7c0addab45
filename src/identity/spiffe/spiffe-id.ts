import { KernelError } from "../../common/index.js";

/** A SPIFFE ID that does not follow the SPIFFE-ID standard; the message says why. */
export class SpiffeIdError extends KernelError {
  override name = "SpiffeIdError";
}

/** A parsed, syntactically valid SPIFFE ID. */
export interface SpiffeId {
  /** The full ID as given, e.g. "spiffe://nops.local/nops/kernel/edge-1". */
  id: string;
  /** The trust domain name, e.g. "nops.local". */
  trustDomain: string;
  /** The path including its leading "/", or "" for a trust-domain-only ID. */
  path: string;
}

const SCHEME = "spiffe://";
// SPIFFE-ID §2.3: URIs are limited to 2048 bytes; §2.1: trust domain names to 255 bytes.
const MAX_ID_BYTES = 2048;
const MAX_TRUST_DOMAIN_BYTES = 255;
// SPIFFE-ID §2.1: lowercase letters, digits, ".", "-" and "_" only.
const TRUST_DOMAIN_RE = /^[a-z0-9._-]+$/;
// SPIFFE-ID §2.2: path segments use letters, digits, ".", "-" and "_" only.
const SEGMENT_RE = /^[a-zA-Z0-9._-]+$/;

/** Parses and validates a SPIFFE ID per the SPIFFE-ID standard; throws SpiffeIdError on bad input. */
export function parseSpiffeId(id: string): SpiffeId {
  if (typeof id !== "string" || id.length === 0) throw new SpiffeIdError("SPIFFE ID is empty");
  if (Buffer.byteLength(id, "utf8") > MAX_ID_BYTES) {
    throw new SpiffeIdError(`SPIFFE ID is longer than ${MAX_ID_BYTES} bytes`);
  }
  // SPIFFE-ID §2: the scheme is exactly "spiffe" (lowercase, compared as written).
  if (!id.startsWith(SCHEME)) throw new SpiffeIdError(`SPIFFE ID must start with "${SCHEME}": ${JSON.stringify(id)}`);
  const rest = id.slice(SCHEME.length);
  const slash = rest.indexOf("/");
  const trustDomain = slash === -1 ? rest : rest.slice(0, slash);
  const path = slash === -1 ? "" : rest.slice(slash);
  if (trustDomain.length === 0) throw new SpiffeIdError(`SPIFFE ID has no trust domain: ${JSON.stringify(id)}`);
  if (trustDomain.length > MAX_TRUST_DOMAIN_BYTES) {
    throw new SpiffeIdError(`SPIFFE ID trust domain is longer than ${MAX_TRUST_DOMAIN_BYTES} bytes`);
  }
  // Ports, userinfo, query and fragment are all excluded by the character set (SPIFFE-ID §2.1, §2.2).
  if (!TRUST_DOMAIN_RE.test(trustDomain)) {
    throw new SpiffeIdError(
      `SPIFFE ID trust domain may contain only lowercase letters, digits, ".", "-" and "_": ${JSON.stringify(id)}`,
    );
  }
  if (path !== "") {
    const segments = path.slice(1).split("/");
    for (const segment of segments) {
      if (segment === "")
        throw new SpiffeIdError(`SPIFFE ID path has an empty segment or a trailing "/": ${JSON.stringify(id)}`);
      if (segment === "." || segment === "..") {
        throw new SpiffeIdError(`SPIFFE ID path may not contain "." or ".." segments: ${JSON.stringify(id)}`);
      }
      if (!SEGMENT_RE.test(segment)) {
        throw new SpiffeIdError(
          `SPIFFE ID path may contain only letters, digits, ".", "-" and "_": ${JSON.stringify(id)}`,
        );
      }
    }
  }
  return { id, trustDomain, path };
}

/** Validates a trust domain name (SPIFFE-ID §2.1); returns it or throws SpiffeIdError. */
export function parseTrustDomain(name: string): string {
  return parseSpiffeId(`${SCHEME}${name}`).trustDomain;
}

/** True when `id` is a valid SPIFFE ID. */
export function isSpiffeId(id: string): boolean {
  try {
    parseSpiffeId(id);
    return true;
  } catch {
    return false;
  }
}
