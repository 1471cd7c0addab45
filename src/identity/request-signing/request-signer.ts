import { randomBytes } from "node:crypto";
import { SIGNATURE_HEADERS, buildCanonicalRequest, sha256Hex, signCanonicalRequest } from "./canonical-request.js";

/** What a client signs. */
export interface SignRequestInput {
  keyId: string;
  secret: Uint8Array;
  method: string;
  path: string;
  /** For gRPC / Connect unary calls: the protobuf binary encoding of the request message. */
  body: Uint8Array;
  /** Headers to sign (they must be sent with exactly these values). @default {} */
  headers?: Record<string, string>;
  /** Unix seconds. @default now */
  timestamp?: number;
  /** @default 16 random bytes, base64url */
  nonce?: string;
}

/** Signs a request for the kernel; returns the x-nops-* headers to send (plus the signed ones). */
export function signRequest(input: SignRequestInput): Record<string, string> {
  const headers = input.headers ?? {};
  const timestamp = input.timestamp ?? Math.floor(Date.now() / 1000);
  const nonce = input.nonce ?? randomBytes(16).toString("base64url");
  const bodySha256 = sha256Hex(input.body);
  const canonical = buildCanonicalRequest({
    method: input.method,
    path: input.path,
    keyId: input.keyId,
    timestamp,
    nonce,
    headers,
    bodySha256,
  });
  const out: Record<string, string> = {
    ...headers,
    [SIGNATURE_HEADERS.keyId]: input.keyId,
    [SIGNATURE_HEADERS.timestamp]: String(timestamp),
    [SIGNATURE_HEADERS.nonce]: nonce,
    [SIGNATURE_HEADERS.contentSha256]: bodySha256,
    [SIGNATURE_HEADERS.signature]: signCanonicalRequest(input.secret, canonical),
  };
  const names = Object.keys(headers)
    .map((n) => n.toLowerCase())
    .sort();
  if (names.length > 0) out[SIGNATURE_HEADERS.signedHeaders] = names.join(";");
  return out;
}
