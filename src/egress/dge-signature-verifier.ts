import { createHash, createHmac, timingSafeEqual } from "node:crypto";
import { LRUCache } from "lru-cache";
import { type Clock, KernelError } from "../common/index.js";

/** Response header carrying the DGE signature (see proto/nops/dge/v1/dge.proto). */
export const DGE_SIGNATURE_HEADER = "x-dge-signature";
/** Largest clock difference a signature may show, both directions (issue: 5 minutes). */
export const DEFAULT_DGE_MAX_SKEW_MS = 5 * 60_000;

/** Shared HMAC keys by key id; the first-listed id signs. */
export type DgeKeyring = Readonly<Record<string, string>>;

/** Why a signature was refused. */
export type DgeSignatureFailure =
  | "missing"
  | "malformed"
  | "unknown_key"
  | "bad_signature"
  | "clock_skew"
  | "replayed_nonce";

/** A DGE response whose signature did not verify. */
export class DgeSignatureError extends KernelError {
  override name = "DgeSignatureError";
  constructor(readonly reason: DgeSignatureFailure) {
    super(`DGE response signature rejected: ${reason}`);
  }
}

// The scheme is part of the DGE contract (proto/nops/dge/v1/dge.proto): every DGE signs this way.
function mac(secret: string, keyId: string, nonce: string, ts: string, method: string, body: Uint8Array): Buffer {
  const bodyHash = createHash("sha256").update(body).digest("hex");
  // The method path is signed too, so a signed Classify answer cannot be replayed as a ValidateEgress one.
  return createHmac("sha256", secret)
    .update(`nops-dge-sig-v1\n${keyId}\n${nonce}\n${ts}\n${method}\n${bodyHash}`)
    .digest();
}

/** Verifies DGE response signatures: known key, constant-time MAC, skew bound, nonce seen once. */
export interface DgeSignatureVerifier {
  /** Throws DgeSignatureError when `header` does not sign `body` for `method`. */
  verify(header: string | null, method: string, body: Uint8Array): void;
}

/** Creates a verifier; nonces are kept for twice the skew window (after that the timestamp check refuses them). */
export function createDgeSignatureVerifier(
  keys: DgeKeyring,
  clock: Clock,
  maxSkewMs = DEFAULT_DGE_MAX_SKEW_MS,
  maxNonces = 100_000,
): DgeSignatureVerifier {
  const seen = new LRUCache<string, true>({
    max: maxNonces,
    ttl: 2 * maxSkewMs,
    ttlResolution: 0,
    perf: { now: () => clock.now() },
  });
  return {
    verify(header, method, body) {
      if (!header) throw new DgeSignatureError("missing");
      const parts = new Map(
        header.split(",").map((p) => {
          const i = p.indexOf("=");
          return [p.slice(0, i).trim(), p.slice(i + 1).trim()] as const;
        }),
      );
      const keyId = parts.get("keyId");
      const nonce = parts.get("nonce");
      const ts = parts.get("ts");
      const sig = parts.get("sig");
      if (
        !keyId ||
        !nonce ||
        !ts ||
        !sig ||
        !/^\d+$/.test(ts) ||
        !/^[0-9a-f]{64}$/.test(sig) ||
        !/^[0-9a-f]{16,64}$/.test(nonce)
      ) {
        throw new DgeSignatureError("malformed");
      }
      const secret = Object.hasOwn(keys, keyId) ? keys[keyId] : undefined;
      if (secret === undefined) throw new DgeSignatureError("unknown_key");
      if (!timingSafeEqual(mac(secret, keyId, nonce, ts, method, body), Buffer.from(sig, "hex"))) {
        throw new DgeSignatureError("bad_signature");
      }
      if (Math.abs(clock.now() - Number(ts)) > maxSkewMs) throw new DgeSignatureError("clock_skew");
      const nonceKey = `${keyId}:${nonce}`;
      if (seen.has(nonceKey)) throw new DgeSignatureError("replayed_nonce");
      seen.set(nonceKey, true);
    },
  };
}
