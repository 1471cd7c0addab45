import { isIP } from "node:net";
import { brotliDecompressSync, gunzipSync, inflateRawSync, inflateSync } from "node:zlib";
import { invalidArgument, resourceExhausted } from "../common/index.js";
import { egressDeniedError, type EgressGuard } from "./egress-guard.js";
import { dropMalformedTraceHeaders } from "./egress-interceptors.js";
import { TENANT_HEADER } from "./outbound-headers.js";
import { OVERRIDE_HEADER } from "./override-grant.js";
import { bytesText } from "./payload-text.js";
import { injectTraceHeaders } from "../telemetry/index.js";

/** fetch with the guard in front; tenant from the x-nops-tenant header. */
export type GuardedFetch = (url: string | URL, init?: RequestInit) => Promise<Response>;

/** Largest body (as sent, and once decoded) the guarded fetch reads for classification. */
export const MAX_GUARDED_BODY_BYTES = 8 * 1024 * 1024;

// Media types a blocked record may name; any other content type is recorded as "other", since
// the caller's content-type header is classified data like any other header.
const RECORDED_MEDIA_TYPES = new Set([
  "application/json",
  "application/x-ndjson",
  "application/xml",
  "application/x-www-form-urlencoded",
  "application/octet-stream",
  "application/grpc",
  "application/proto",
  "application/x-protobuf",
  "application/connect+json",
  "application/connect+proto",
  "multipart/form-data",
  "text/plain",
  "text/csv",
  "text/html",
  "text/xml",
]);

function recordedMediaType(contentType: string | null): string {
  if (contentType === null) return "";
  const media = (contentType.split(";")[0] ?? "").trim().toLowerCase();
  return RECORDED_MEDIA_TYPES.has(media) ? media : "other";
}

/** The bytes a body sends and the text the classifier reads of it. */
async function bodyBytes(body: RequestInit["body"]): Promise<{ bytes: Uint8Array; text?: string }> {
  if (body === undefined || body === null) return { bytes: new Uint8Array() };
  if (typeof body === "string") return { bytes: Buffer.from(body, "utf8"), text: body };
  if (body instanceof URLSearchParams) {
    // Form fields read decoded (`+` and percent-encoding), as the receiver reads them.
    const fields = [...body.entries()].map(([k, v]) => `${k}=${v}`).join("\n");
    return { bytes: Buffer.from(body.toString(), "utf8"), text: fields };
  }
  if (body instanceof ArrayBuffer) return { bytes: new Uint8Array(body) };
  if (ArrayBuffer.isView(body)) return { bytes: new Uint8Array(body.buffer, body.byteOffset, body.byteLength) };
  if (body instanceof Blob) {
    if (body.size > MAX_GUARDED_BODY_BYTES) throw tooLarge("body");
    return { bytes: new Uint8Array(await body.arrayBuffer()) };
  }
  if (body instanceof FormData) {
    // Every field and every file's content, read before the request is built.
    const parts: string[] = [];
    let size = 0;
    for (const [name, value] of body.entries()) {
      if (typeof value === "string") {
        size += value.length;
        parts.push(`${name}=${value}`);
      } else {
        size += value.size;
        if (size > MAX_GUARDED_BODY_BYTES) throw tooLarge("body");
        parts.push(`${name}: ${value.name} ${value.type}`, bytesText(new Uint8Array(await value.arrayBuffer())));
      }
      if (size > MAX_GUARDED_BODY_BYTES) throw tooLarge("body");
    }
    const text = parts.join("\n");
    return { bytes: Buffer.from(text, "utf8"), text };
  }
  throw invalidArgument(
    "body",
    "a streaming body cannot be checked before it is sent; pass a string, bytes, ArrayBuffer, URLSearchParams, Blob or FormData",
  );
}

function tooLarge(field: string): Error {
  return resourceExhausted(`${field}: larger than ${MAX_GUARDED_BODY_BYTES} bytes, the most the egress guard reads`);
}

/**
 * The body as the receiver reads it after its Content-Encoding (codings applied in order, so they
 * are undone last first). gzip, deflate (zlib or raw) and br are decoded, bounded by
 * MAX_GUARDED_BODY_BYTES; any other coding cannot be classified and refuses the request.
 */
function decodeContent(bytes: Uint8Array, contentEncoding: string | null): Uint8Array {
  if (contentEncoding === null) return bytes;
  const codings = contentEncoding
    .split(",")
    .map((c) => c.trim().toLowerCase())
    .filter((c) => c !== "" && c !== "identity");
  let out = bytes;
  const limit = { maxOutputLength: MAX_GUARDED_BODY_BYTES };
  for (const coding of codings.reverse()) {
    try {
      if (coding === "gzip" || coding === "x-gzip") out = gunzipSync(out, limit);
      else if (coding === "br") out = brotliDecompressSync(out, limit);
      else if (coding === "deflate") {
        // RFC 9110 deflate is zlib-wrapped; some senders send raw deflate.
        try {
          out = inflateSync(out, limit);
        } catch (err) {
          if ((err as { code?: string }).code === "ERR_BUFFER_TOO_LARGE") throw err;
          out = inflateRawSync(out, limit);
        }
      } else
        throw invalidArgument(
          "content-encoding",
          `"${coding}" cannot be decoded for classification (gzip, deflate and br can)`,
        );
    } catch (err) {
      if ((err as { code?: string }).code === "ERR_BUFFER_TOO_LARGE") throw tooLarge("decoded body");
      if (err instanceof Error && err.name === "ConnectError") throw err;
      throw invalidArgument("body", `is not valid ${coding} data as its content-encoding says`);
    }
  }
  return out;
}

/**
 * The host as data: a DNS name may carry data in its labels; an IP literal or localhost is the
 * network address the client was configured with, not anyone's data (an IP address here is where
 * the call goes, not a finding).
 */
function hostText(hostname: string): string {
  const bare = hostname.startsWith("[") ? hostname.slice(1, -1) : hostname;
  return isIP(bare) !== 0 || bare === "localhost" ? "" : hostname;
}

function safeDecode(s: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    return s;
  }
}

/**
 * Wraps fetch for HTTP egress. The whole request is classified before anything is sent: the URL
 * (host, path and query, percent-decoded), every header but the guard's own, and the body in
 * every form fetch takes (string, bytes, ArrayBuffer, URLSearchParams, Blob and FormData are read
 * first; a content-encoded body is decoded first). A streaming body, an unknown content coding or
 * a body over MAX_GUARDED_BODY_BYTES is refused. A blocked request rejects with PERMISSION_DENIED.
 * Malformed trace headers are dropped; the request carries the active trace.
 */
export function createGuardedFetch(
  guard: EgressGuard,
  destination: string,
  baseFetch: typeof fetch = fetch,
): GuardedFetch {
  return async (url, init = {}) => {
    const headers = new Headers(init.headers);
    const tenant = headers.get(TENANT_HEADER) ?? "";
    const override = headers.get(OVERRIDE_HEADER) ?? undefined;
    headers.delete(OVERRIDE_HEADER);
    dropMalformedTraceHeaders(headers);
    // The call continues the caller's trace unless it names a valid parent itself; injected before
    // the check, so the tracestate it carries is classified like every other header.
    if (!headers.has("traceparent")) injectTraceHeaders(headers);
    const u = new URL(url);
    const read = await bodyBytes(init.body);
    if (read.bytes.byteLength > MAX_GUARDED_BODY_BYTES) throw tooLarge("body");
    const decoded = decodeContent(read.bytes, headers.get("content-encoding"));
    const payload = decoded === read.bytes && read.text !== undefined ? read.text : decoded;
    const query = [...u.searchParams.entries()].map(([k, v]) => `${k}=${v}`).join("\n");
    const d = await guard.check({
      tenant,
      transport: "http",
      destination: `${destination}:${u.origin}${u.pathname}`,
      dataType: headers.get("content-type") ?? "",
      payload,
      headers: [
        [
          ":url",
          `${safeDecode(u.username)} ${safeDecode(u.password)} ${hostText(u.hostname)} ${safeDecode(u.pathname)}`,
        ],
        [":query", query],
        ...headers.entries(),
      ],
      record: { destination: `${destination}:${u.protocol}`, dataType: recordedMediaType(headers.get("content-type")) },
      override,
      signal: init.signal ?? undefined,
    });
    if (!d.allowed) throw egressDeniedError(d);
    return baseFetch(u, { ...init, headers });
  };
}
