import type { DescMethod, DescService } from "@bufbuild/protobuf";
import { createContextKey, type HandlerContext } from "@connectrpc/connect";
import type { Logger } from "pino";

/** A call as the interceptor chain sees it, for every method kind and both transports. */
export interface CallRequest {
  readonly service: DescService;
  readonly method: DescMethod;
  /** Handler context: headers, signal, deadline and per-request values (see the keys below). */
  readonly ctx: HandlerContext;
  /** The request message (unary, server-streaming) or an async iterable of them (client, bidi). */
  readonly input: unknown;
}

/** What a handler produced: one message, or a stream of them. */
export type CallResult =
  | { readonly kind: "unary"; readonly output: unknown }
  | { readonly kind: "stream"; readonly output: AsyncIterable<unknown> };

/** The next step in the chain. It refuses by rejecting, never by throwing. */
export type CallHandler = (call: CallRequest) => Promise<CallResult>;

/**
 * One link of the kernel's interceptor chain. The same chain runs for grpc-js and connect-node
 * (see bind-service.ts), so an interceptor is written once for both transports.
 *
 * A link that lets most calls through after synchronous checks is a plain function returning
 * `next(call)` (a refusal is `Promise.reject`), with an async function only for the calls that
 * wait: an async link costs every call a promise, a suspended frame and microtask turns.
 */
export type KernelInterceptor = (next: CallHandler) => CallHandler;

/** Transport facts about the caller, set by the transport adapter before the chain runs. */
export interface PeerInfo {
  /** Remote address, e.g. "127.0.0.1:53012". */
  address: string;
  /** "grpc-js" or "connect-node". */
  transport: "grpc-js" | "connect-node";
  /** DER certificates the peer presented over mTLS, leaf first; empty over plaintext. */
  certificates: Uint8Array[];
}

/** "1.2.3.4:5678" -> "1.2.3.4", "[::1]:5678" -> "::1"; a bare address is returned as is. */
export function clientIp(address: string): string {
  const bracketed = /^\[([^\]]+)\](?::\d+)?$/.exec(address);
  if (bracketed) return bracketed[1]!;
  const v4 = /^([^:]+):\d+$/.exec(address);
  return v4 ? v4[1]! : address;
}

/** Per-request value: transport facts about the caller. */
export const kPeer = createContextKey<PeerInfo>(
  { address: "", transport: "connect-node", certificates: [] },
  { description: "peer" },
);
/** Per-request value: the correlation id (from x-request-id or generated). */
export const kCorrelationId = createContextKey<string>("", { description: "correlation id" });
/** The request-scoped logger, made on first use: most calls never log. */
export interface RequestLogger {
  /** The level check, answered by the parent without making the child. */
  isLevelEnabled(level: string): boolean;
  /** The child logger carrying the correlation id. */
  get(): Logger;
}
/** Per-request value: the request-scoped logger (carries the correlation id). */
export const kLogger = createContextKey<RequestLogger | undefined>(undefined, { description: "request logger" });

// One string per method: the chain's links look a call's path up in Maps, and a string built per call
// would be hashed again for each lookup (V8 keeps a string's hash in the string).
const paths = new WeakMap<DescMethod, string>();

/** Full RPC path of a method, e.g. "/nops.kernel.v1.AgentRegistryService/Heartbeat". */
export function methodPath(method: DescMethod): string {
  let path = paths.get(method);
  if (path === undefined) {
    path = `/${method.parent.typeName}/${method.name}`;
    paths.set(method, path);
  }
  return path;
}

/** Wraps a stream so `onEnd` runs once when it finishes, fails or is abandoned. */
export async function* observeStream<T>(source: AsyncIterable<T>, onEnd: (error: unknown) => void): AsyncIterable<T> {
  let error: unknown = undefined;
  try {
    yield* source;
  } catch (e) {
    error = e;
    throw e;
  } finally {
    onEnd(error);
  }
}

/**
 * `ctx` with another abort signal (and deadline); every other field is the call's own. The signal is
 * read through `signal()` on each access, so it can be made when a handler first reads it.
 */
export function withSignal(
  ctx: HandlerContext,
  signal: () => AbortSignal,
  timeoutMs: () => number | undefined = ctx.timeoutMs,
): HandlerContext {
  return new DerivedContext(ctx, signal, timeoutMs);
}

// A class, not an object literal: a literal with a getter is built on V8's slow path (the deadline cap
// measured 2.9 µs a call with one, 0.2 µs with this class).
class DerivedContext implements HandlerContext {
  readonly service: HandlerContext["service"];
  readonly method: HandlerContext["method"];
  readonly requestMethod: string;
  readonly requestHeader: Headers;
  readonly responseHeader: Headers;
  readonly responseTrailer: Headers;
  readonly protocolName: string;
  readonly values: HandlerContext["values"];
  readonly url: string;

  constructor(
    ctx: HandlerContext,
    private readonly readSignal: () => AbortSignal,
    readonly timeoutMs: () => number | undefined,
  ) {
    this.service = ctx.service;
    this.method = ctx.method;
    this.requestMethod = ctx.requestMethod;
    this.requestHeader = ctx.requestHeader;
    this.responseHeader = ctx.responseHeader;
    this.responseTrailer = ctx.responseTrailer;
    this.protocolName = ctx.protocolName;
    this.values = ctx.values;
    this.url = ctx.url;
  }

  get signal(): AbortSignal {
    return this.readSignal();
  }
}

/**
 * Ends a stream with `signal.reason` as soon as `signal` aborts, even while the handler waits for
 * its next message, then ends the handler's generator (its finally blocks release what it holds).
 */
export async function* endStreamOnAbort<T>(source: AsyncIterable<T>, signal: AbortSignal): AsyncIterable<T> {
  const it = source[Symbol.asyncIterator]();
  const reason = () => (signal.reason instanceof Error ? signal.reason : new Error(String(signal.reason)));
  let onAbort: (() => void) | undefined;
  const aborted = new Promise<never>((_, reject) => {
    onAbort = () => reject(reason());
    if (signal.aborted) onAbort();
    else signal.addEventListener("abort", onAbort, { once: true });
  });
  aborted.catch(() => undefined);
  try {
    for (;;) {
      const r = await Promise.race([it.next(), aborted]);
      if (signal.aborted) throw reason();
      if (r.done) return;
      yield r.value;
    }
  } finally {
    if (onAbort) signal.removeEventListener("abort", onAbort);
    void Promise.resolve(it.return?.()).catch(() => undefined);
  }
}
