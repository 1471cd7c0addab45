import type { DescMethod } from "@bufbuild/protobuf";
import { Code } from "@connectrpc/connect";
import type { UniversalServerResponse } from "@connectrpc/connect/protocol";

// Connect's JSON error codes (connect protocol spec, "Error Codes").
const CODE_NAMES: Record<string, Code> = {
  internal: Code.Internal,
  unknown: Code.Unknown,
};

/** An error as it leaves the server: its code and message, or a replacement for them. */
interface WireError {
  code: Code;
  message: string;
}

// What errorMappingInterceptor (errors.ts) answers for an internal error: already scrubbed.
const SCRUBBED_INTERNAL = /^internal error \(request [A-Za-z0-9._:/-]{1,128}\)$/;

/**
 * The error the caller should see instead of `error`, or undefined to keep it. connect-node
 * answers a request body that is not valid protobuf with INTERNAL "parse binary: <reason>"
 * (@connectrpc/connect serialization.ts): the caller sent it, so it is INVALID_ARGUMENT, as the
 * grpc-js port answers. Any other INTERNAL or UNKNOWN message not made by the kernel's error
 * mapping is replaced: it may carry an internal message or a stack.
 */
export function replacementFor(error: WireError, method: DescMethod, requestId: string): WireError | undefined {
  if (error.code !== Code.Internal && error.code !== Code.Unknown) return undefined;
  if (error.message.startsWith("parse binary:")) {
    return { code: Code.InvalidArgument, message: `request: cannot decode ${method.input.typeName}` };
  }
  if (SCRUBBED_INTERNAL.test(error.message)) return undefined;
  return { code: Code.Internal, message: `internal error (request ${requestId})` };
}

const CONNECT_NAME: Record<number, string> = {
  [Code.InvalidArgument]: "invalid_argument",
  [Code.Internal]: "internal",
};
const HTTP_STATUS: Record<number, number> = { [Code.InvalidArgument]: 400, [Code.Internal]: 500 };

async function readAll(body: AsyncIterable<Uint8Array>): Promise<Uint8Array> {
  const chunks: Uint8Array[] = [];
  for await (const c of body) chunks.push(c);
  return Buffer.concat(chunks);
}

async function* once(bytes: Uint8Array): AsyncIterable<Uint8Array> {
  yield bytes;
}

function envelope(flags: number, payload: Uint8Array): Uint8Array {
  const out = Buffer.alloc(5 + payload.length);
  out[0] = flags;
  out.writeUInt32BE(payload.length, 1);
  out.set(payload, 5);
  return out;
}

function rewriteGrpcHeaders(h: Headers | undefined, method: DescMethod, requestId: string): void {
  const status = h?.get("grpc-status");
  if (!h || status === null || status === undefined) return;
  const message = decodeURIComponent(h.get("grpc-message") ?? "");
  const r = replacementFor({ code: Number(status), message }, method, requestId);
  if (!r) return;
  h.set("grpc-status", String(r.code));
  h.set("grpc-message", encodeURIComponent(r.message));
}

// A gRPC-Web trailer block: "grpc-status: 13\r\ngrpc-message: ...\r\n".
function rewriteGrpcWebTrailer(payload: Uint8Array, method: DescMethod, requestId: string): Uint8Array {
  const h = new Headers();
  for (const line of Buffer.from(payload).toString("latin1").split("\r\n")) {
    const i = line.indexOf(":");
    if (i > 0) h.append(line.slice(0, i).trim(), line.slice(i + 1).trim());
  }
  const before = `${h.get("grpc-status")}|${h.get("grpc-message")}`;
  rewriteGrpcHeaders(h, method, requestId);
  if (`${h.get("grpc-status")}|${h.get("grpc-message")}` === before) return payload;
  let text = "";
  h.forEach((v, k) => (text += `${k}: ${v}\r\n`));
  return Buffer.from(text, "latin1");
}

function rewriteConnectEndStream(payload: Uint8Array, method: DescMethod, requestId: string): Uint8Array {
  try {
    const end = JSON.parse(Buffer.from(payload).toString("utf8")) as { error?: { code?: string; message?: string } };
    const code = end.error?.code !== undefined ? CODE_NAMES[end.error.code] : undefined;
    if (code === undefined || !end.error) return payload;
    const r = replacementFor({ code, message: end.error.message ?? "" }, method, requestId);
    if (!r) return payload;
    end.error = { code: CONNECT_NAME[r.code] ?? "internal", message: r.message };
    return Buffer.from(JSON.stringify(end));
  } catch {
    return payload;
  }
}

// Streams: the error rides in the last envelope (Connect end-stream 0x02, gRPC-Web trailer 0x80),
// which connect-node writes as one chunk; the messages before it pass untouched.
async function* rewriteEnvelopes(
  body: AsyncIterable<Uint8Array>,
  flag: number,
  rewrite: (payload: Uint8Array) => Uint8Array,
): AsyncIterable<Uint8Array> {
  for await (const chunk of body) {
    if (chunk.length >= 5 && chunk[0] === flag && Buffer.from(chunk).readUInt32BE(1) === chunk.length - 5) {
      yield envelope(flag, rewrite(chunk.subarray(5)));
    } else {
      yield chunk;
    }
  }
}

/**
 * Rewrites the error of a connect-node response per `replacementFor`, for every protocol the HTTP
 * port speaks (Connect unary and streaming, gRPC, gRPC-Web). Successful responses pass through;
 * only error bodies, which are small, are read.
 */
export async function scrubErrorResponse(
  res: UniversalServerResponse,
  method: DescMethod,
  requestId: string,
  contentType: string,
): Promise<UniversalServerResponse> {
  if (contentType.startsWith("application/grpc-web")) {
    rewriteGrpcHeaders(res.header, method, requestId);
    return res.body
      ? { ...res, body: rewriteEnvelopes(res.body, 0x80, (p) => rewriteGrpcWebTrailer(p, method, requestId)) }
      : res;
  }
  if (contentType.startsWith("application/grpc")) {
    rewriteGrpcHeaders(res.header, method, requestId);
    rewriteGrpcHeaders(res.trailer, method, requestId);
    return res;
  }
  if (contentType.startsWith("application/connect+")) {
    return res.body
      ? { ...res, body: rewriteEnvelopes(res.body, 0x02, (p) => rewriteConnectEndStream(p, method, requestId)) }
      : res;
  }
  // Connect unary: a non-200 status carries a JSON error body.
  if (res.status === 200 || !res.body) return res;
  const bytes = await readAll(res.body);
  try {
    const err = JSON.parse(Buffer.from(bytes).toString("utf8")) as { code?: string; message?: string };
    const code = err.code !== undefined ? CODE_NAMES[err.code] : undefined;
    const r = code === undefined ? undefined : replacementFor({ code, message: err.message ?? "" }, method, requestId);
    if (r) {
      const body = Buffer.from(JSON.stringify({ code: CONNECT_NAME[r.code], message: r.message }));
      const header = new Headers(res.header);
      header.set("content-length", String(body.length));
      return { ...res, status: HTTP_STATUS[r.code] ?? 500, header, body: once(body) };
    }
  } catch {
    // not a JSON error body: keep it
  }
  return { ...res, body: once(bytes) };
}
