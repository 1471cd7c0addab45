import { createHash, createHmac, randomBytes } from "node:crypto";

/** Response header carrying the DGE signature (see proto/nops/dge/v1/dge.proto). */
export const DGE_SIGNATURE_HEADER = "x-dge-signature";

// The scheme is the DGE contract's (proto/nops/dge/v1/dge.proto); the kernel verifies it in src/egress.
function mac(secret: string, keyId: string, nonce: string, ts: string, method: string, body: Uint8Array): Buffer {
  const bodyHash = createHash("sha256").update(body).digest("hex");
  // The method path is signed too, so a signed Classify answer cannot be replayed as a ValidateEgress one.
  return createHmac("sha256", secret)
    .update(`nops-dge-sig-v1\n${keyId}\n${nonce}\n${ts}\n${method}\n${bodyHash}`)
    .digest();
}

/** Signs a serialized response body; returns the header value. */
export function signDgeResponse(
  key: { id: string; secret: string },
  method: string,
  body: Uint8Array,
  nowMs: number,
): string {
  const nonce = randomBytes(16).toString("hex");
  const ts = String(nowMs);
  return `keyId=${key.id},nonce=${nonce},ts=${ts},sig=${mac(key.secret, key.id, nonce, ts, method, body).toString("hex")}`;
}
