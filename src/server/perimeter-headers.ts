import { randomUUID } from "node:crypto";

/** The header that correlates a response with its log lines. */
export const REQUEST_ID_HEADER = "x-request-id";

// Same rule as the correlation interceptor: ids safe to log and echo; anything else is replaced.
const VALID_REQUEST_ID = /^[A-Za-z0-9._:/-]{1,128}$/;

/** The caller's x-request-id when it is safe to echo, else a fresh one. */
export function requestIdFor(given: string | string[] | undefined): string {
  const value = Array.isArray(given) ? given[0] : given;
  return value !== undefined && VALID_REQUEST_ID.test(value) ? value : randomUUID();
}

/** One year, the HSTS preload minimum (hstspreload.org). */
export const HSTS_MAX_AGE_S = 31_536_000;

/**
 * Headers every HTTP response of the kernel carries (OWASP Secure Headers for APIs): no MIME
 * sniffing, no framing, no referrer, no caching of API answers; HSTS only over TLS (RFC 6797
 * §7.2: a plaintext response must not carry it).
 */
export function perimeterHeaders(tls: boolean): ReadonlyArray<readonly [string, string]> {
  const headers: [string, string][] = [
    ["x-content-type-options", "nosniff"],
    ["content-security-policy", "frame-ancestors 'none'"],
    ["referrer-policy", "no-referrer"],
    ["cache-control", "no-store"],
  ];
  if (tls) headers.push(["strict-transport-security", `max-age=${HSTS_MAX_AGE_S}`]);
  return headers;
}
