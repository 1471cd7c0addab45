import { timingSafeEqual } from "node:crypto";
import type { Clock } from "../../common/index.js";
import { SIGNATURE_HEADERS, buildCanonicalRequest, sha256Hex, signCanonicalRequest } from "./canonical-request.js";
import { NonceStoreFullError, type NonceStore } from "./nonce-store.js";
import type { RequestSigningOptions, SigningKey } from "./request-signing-options.js";

/** Why a signed request was refused (stable strings: they go to the audit trail and the client). */
export type SignatureRejection =
  | "malformed"
  | "timestamp_skew"
  | "unknown_key_id"
  | "unsigned_required_header"
  | "body_hash_mismatch"
  | "bad_signature"
  | "tenant_mismatch"
  | "nonce_replayed"
  | "nonce_store_unavailable";

/** A request as the verifier sees it. */
export interface SignedRequest {
  method: string;
  path: string;
  headers: Headers;
  body: Uint8Array;
  /** The tenant the request message names, if any. */
  tenant?: string;
}

/** Outcome of a verification. */
export type VerifyResult = { ok: true; key: SigningKey } | { ok: false; reason: SignatureRejection; keyId?: string };

/** Verifies signed requests: timestamp, then signature (constant time), then nonce. */
export interface RequestVerifier {
  verify(request: SignedRequest): Promise<VerifyResult>;
}

const HEX64 = /^[0-9a-f]{64}$/;
const NONCE_RE = /^[A-Za-z0-9_-]{16,128}$/;
const TIMESTAMP_RE = /^\d{1,12}$/;

/** Creates the verifier. */
export function createRequestVerifier(
  deps: { nonces: NonceStore; clock: Clock },
  options: RequestSigningOptions,
): RequestVerifier {
  const keys = new Map(options.keys.map((k) => [k.id, k]));
  return {
    async verify(req) {
      const h = (name: string): string | null => req.headers.get(name);
      const keyId = h(SIGNATURE_HEADERS.keyId) ?? undefined;
      const ts = h(SIGNATURE_HEADERS.timestamp);
      const nonce = h(SIGNATURE_HEADERS.nonce);
      const bodyHash = h(SIGNATURE_HEADERS.contentSha256);
      const signature = h(SIGNATURE_HEADERS.signature);
      const fail = (reason: SignatureRejection): VerifyResult => ({ ok: false, reason, keyId });
      if (
        !keyId ||
        !ts ||
        !TIMESTAMP_RE.test(ts) ||
        !nonce ||
        !NONCE_RE.test(nonce) ||
        !bodyHash ||
        !HEX64.test(bodyHash) ||
        !signature ||
        !HEX64.test(signature)
      ) {
        return fail("malformed");
      }
      // Timestamp first: it is the cheapest check and bounds how long a nonce must be remembered.
      if (Math.abs(deps.clock.now() - Number(ts) * 1000) > options.maxSkewMs) return fail("timestamp_skew");
      const key = keys.get(keyId);
      if (!key) return fail("unknown_key_id");
      const signedNames = (h(SIGNATURE_HEADERS.signedHeaders) ?? "")
        .split(";")
        .map((s) => s.trim().toLowerCase())
        .filter(Boolean);
      if (signedNames.some((n) => n.startsWith("x-nops-") || req.headers.get(n) === null)) return fail("malformed");
      if (options.requiredSignedHeaders.some((n) => !signedNames.includes(n))) return fail("unsigned_required_header");
      const actualHash = sha256Hex(req.body);
      if (bodyHash !== actualHash) return fail("body_hash_mismatch");
      const canonical = buildCanonicalRequest({
        method: req.method,
        path: req.path,
        keyId,
        timestamp: Number(ts),
        nonce,
        headers: Object.fromEntries(signedNames.map((n) => [n, req.headers.get(n)!])),
        bodySha256: actualHash,
      });
      const expected = Buffer.from(signCanonicalRequest(key.secret, canonical), "hex");
      if (!timingSafeEqual(expected, Buffer.from(signature, "hex"))) return fail("bad_signature");
      if (key.tenant !== undefined && req.tenant !== undefined && req.tenant !== key.tenant)
        return fail("tenant_mismatch");
      // The nonce is claimed last so that forged requests cannot burn a legitimate client's nonces.
      try {
        if (!(await deps.nonces.claim(`${keyId}:${nonce}`, options.nonceTtlMs))) return fail("nonce_replayed");
      } catch (e) {
        if (e instanceof NonceStoreFullError) return fail("nonce_store_unavailable");
        throw e;
      }
      return { ok: true, key };
    },
  };
}
