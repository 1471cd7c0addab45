import { createHash, createHmac } from "node:crypto";

/** First line of every canonical request; names the scheme and its version. */
export const SIGNATURE_ALGORITHM = "NOPS-HMAC-SHA256";

/** Request headers of the scheme (docs/signed-requests.md). */
export const SIGNATURE_HEADERS = {
  keyId: "x-nops-key-id",
  timestamp: "x-nops-timestamp",
  nonce: "x-nops-nonce",
  contentSha256: "x-nops-content-sha256",
  signedHeaders: "x-nops-signed-headers",
  signature: "x-nops-signature",
} as const;

/** Everything the signature covers. */
export interface CanonicalRequestParts {
  /** HTTP method, e.g. "POST" (upper-cased). */
  method: string;
  /** RPC path, e.g. "/nops.kernel.v1.RoutingService/Invoke". */
  path: string;
  keyId: string;
  /** Unix time in seconds. */
  timestamp: number;
  nonce: string;
  /** Signed headers: lower-case name -> value. */
  headers: Record<string, string>;
  /** Lower-case hex SHA-256 of the body. */
  bodySha256: string;
}

/** Lower-case hex SHA-256. */
export function sha256Hex(data: Uint8Array | string): string {
  return createHash("sha256").update(data).digest("hex");
}

// Header values are trimmed and inner whitespace runs collapsed, as proxies may re-fold them.
const normalizeValue = (v: string): string => v.trim().replace(/\s+/g, " ");

/**
 * The canonical request: lines joined by "\n", no trailing newline —
 * algorithm, METHOD, path, key id, timestamp, nonce, signed header names (sorted, ";"-joined),
 * one "name:value" line per signed header (same order), body SHA-256.
 */
export function buildCanonicalRequest(p: CanonicalRequestParts): string {
  const names = Object.keys(p.headers)
    .map((n) => n.toLowerCase())
    .sort();
  const lower = Object.fromEntries(Object.entries(p.headers).map(([k, v]) => [k.toLowerCase(), v]));
  return [
    SIGNATURE_ALGORITHM,
    p.method.toUpperCase(),
    p.path,
    p.keyId,
    String(p.timestamp),
    p.nonce,
    names.join(";"),
    ...names.map((n) => `${n}:${normalizeValue(lower[n]!)}`),
    p.bodySha256,
  ].join("\n");
}

/** Lower-case hex HMAC-SHA256 of the canonical request under `secret`. */
export function signCanonicalRequest(secret: Uint8Array, canonical: string): string {
  return createHmac("sha256", secret).update(canonical, "utf8").digest("hex");
}
