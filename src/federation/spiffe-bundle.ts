import { createHash, createPublicKey, X509Certificate, type JsonWebKey } from "node:crypto";
import { KernelError } from "../common/index.js";
import { createX509Bundle, pemToDer, type X509Bundle } from "../identity/index.js";

/** A SPIFFE bundle document that cannot be used; the message says why (safe to log and return). */
export class SpiffeBundleError extends KernelError {
  override name = "SpiffeBundleError";
}

/** A trust domain's bundle as the SPIFFE bundle format carries it (SPIFFE Trust Domain and Bundle §4). */
export interface SpiffeBundle {
  readonly x509: X509Bundle;
  /** spiffe_sequence: grows when the bundle changes; 0 when absent. */
  readonly sequence: number;
  /** spiffe_refresh_hint in seconds; undefined when absent. */
  readonly refreshHintSeconds?: number;
}

// The JWKS a bundle endpoint serves must stay small; real bundles hold a handful of keys.
const MAX_BUNDLE_BYTES = 256 * 1024;
const MAX_KEYS = 64;

/** SHA-256 (lower-case hex) of one authority's DER: what `openssl x509 -fingerprint -sha256` prints. */
export function authorityFingerprint(der: Uint8Array): string {
  return createHash("sha256").update(der).digest("hex");
}

/** Normalises an operator-given fingerprint: hex, colons allowed, any case; undefined when malformed. */
export function normaliseFingerprint(input: string): string | undefined {
  const hex = input.replaceAll(":", "").toLowerCase();
  return /^[0-9a-f]{64}$/.test(hex) ? hex : undefined;
}

/** The fingerprint of a whole bundle: SHA-256 over its authorities' fingerprints, sorted (order-free). */
export function bundleFingerprint(bundle: X509Bundle): string {
  const parts = bundle.authorities.map((a) => authorityFingerprint(a.der)).sort();
  return createHash("sha256").update(parts.join("\n")).digest("hex");
}

/** True when one of the bundle's authorities has this SHA-256 fingerprint (normalised). */
export function bundleHasAuthority(bundle: X509Bundle, fingerprint: string): boolean {
  return bundle.authorities.some((a) => authorityFingerprint(a.der) === fingerprint);
}

/**
 * Serialises a bundle as the SPIFFE bundle format: a JWKS whose X.509 authorities are keys with
 * use "x509-svid" and exactly one x5c certificate, plus spiffe_sequence and spiffe_refresh_hint.
 */
export function encodeSpiffeBundle(bundle: X509Bundle, sequence: number, refreshHintSeconds: number): string {
  const keys = bundle.authorities.map((a) => {
    const jwk = a.certificate.publicKey.export({ format: "jwk" });
    return { use: "x509-svid", ...jwk, x5c: [Buffer.from(a.der).toString("base64")] };
  });
  return JSON.stringify({ keys, spiffe_sequence: sequence, spiffe_refresh_hint: refreshHintSeconds });
}

function samePublicKey(cert: X509Certificate, jwk: JsonWebKey): boolean {
  try {
    const fromJwk = createPublicKey({ key: jwk, format: "jwk" }).export({ type: "spki", format: "der" });
    return fromJwk.equals(cert.publicKey.export({ type: "spki", format: "der" }));
  } catch {
    return false;
  }
}

/**
 * Parses a SPIFFE bundle document for `trustDomain`. Keys of other uses (jwt-svid) are ignored,
 * as the format asks; an x509-svid key must carry exactly one certificate whose public key is
 * the key's own. Also accepts PEM or base64 DER certificates (an operator's initial bundle).
 */
export function parseSpiffeBundle(trustDomain: string, text: string): SpiffeBundle {
  if (text.length > MAX_BUNDLE_BYTES) throw new SpiffeBundleError(`bundle is larger than ${MAX_BUNDLE_BYTES} bytes`);
  const trimmed = text.trim();
  if (trimmed.startsWith("-----BEGIN")) {
    let ders: Uint8Array[];
    try {
      ders = pemToDer("CERTIFICATE", trimmed);
    } catch (err) {
      throw new SpiffeBundleError("bundle PEM cannot be decoded", { cause: err });
    }
    return { x509: wrap(() => createX509Bundle(trustDomain, ders)), sequence: 0 };
  }
  let doc: unknown;
  try {
    doc = JSON.parse(trimmed);
  } catch {
    throw new SpiffeBundleError("bundle is neither a SPIFFE bundle (JSON) nor PEM certificates");
  }
  if (typeof doc !== "object" || doc === null || !Array.isArray((doc as { keys?: unknown }).keys)) {
    throw new SpiffeBundleError("bundle: keys must be a list");
  }
  const d = doc as { keys: unknown[]; spiffe_sequence?: unknown; spiffe_refresh_hint?: unknown };
  if (d.keys.length > MAX_KEYS) throw new SpiffeBundleError(`bundle: more than ${MAX_KEYS} keys`);
  const authorities: Uint8Array[] = [];
  d.keys.forEach((k, i) => {
    if (typeof k !== "object" || k === null) throw new SpiffeBundleError(`bundle: keys[${i}] is not an object`);
    const key = k as { use?: unknown; x5c?: unknown };
    if (key.use !== "x509-svid") return;
    if (!Array.isArray(key.x5c) || key.x5c.length !== 1 || typeof key.x5c[0] !== "string") {
      throw new SpiffeBundleError(`bundle: keys[${i}].x5c must hold exactly one certificate`);
    }
    const der = new Uint8Array(Buffer.from(key.x5c[0], "base64"));
    let cert: X509Certificate;
    try {
      cert = new X509Certificate(der);
    } catch {
      throw new SpiffeBundleError(`bundle: keys[${i}].x5c[0] is not a certificate`);
    }
    if (!samePublicKey(cert, k as JsonWebKey)) {
      throw new SpiffeBundleError(`bundle: keys[${i}] public key differs from its certificate's`);
    }
    authorities.push(der);
  });
  if (authorities.length === 0) throw new SpiffeBundleError("bundle holds no x509-svid authority");
  const sequence = d.spiffe_sequence ?? 0;
  if (typeof sequence !== "number" || !Number.isSafeInteger(sequence) || sequence < 0) {
    throw new SpiffeBundleError("bundle: spiffe_sequence must be a non-negative integer");
  }
  const hint = d.spiffe_refresh_hint;
  if (hint !== undefined && (typeof hint !== "number" || !Number.isFinite(hint) || hint <= 0)) {
    throw new SpiffeBundleError("bundle: spiffe_refresh_hint must be a positive number of seconds");
  }
  return {
    x509: wrap(() => createX509Bundle(trustDomain, authorities)),
    sequence,
    ...(hint === undefined ? {} : { refreshHintSeconds: hint }),
  };
}

function wrap(build: () => X509Bundle): X509Bundle {
  try {
    return build();
  } catch (err) {
    throw new SpiffeBundleError(err instanceof Error ? err.message : "bundle cannot be used", { cause: err });
  }
}
