import * as http2 from "node:http2";
import type { ConnectionOptions } from "node:tls";
import { Code } from "@connectrpc/connect";
import { codeFromHttpStatus } from "@connectrpc/connect/protocol-grpc";
import { type Clock, KernelError } from "../common/index.js";
import type { EgressPreSend } from "../egress/index.js";
import type { Logger } from "../telemetry/index.js";

/**
 * How an outbound gRPC call failed. `delivered` is false only when no byte of the request reached
 * the agent (no connection, REFUSED_STREAM, GOAWAY before the stream was processed): such a call
 * did no work anywhere and the router may re-route it.
 */
export class AgentCallError extends KernelError {
  override name = "AgentCallError";
  constructor(
    readonly code: Code,
    /** The agent's grpc-message (percent-decoded) or the client's reason. */
    readonly details: string,
    readonly delivered: boolean,
    options?: { cause?: unknown },
  ) {
    super(details, options);
  }
}

/** Per-call settings. */
export interface H2CallOptions {
  /** Absolute deadline, ms on the client's clock. */
  deadline: number;
  /** Request headers (metadata); the hook sees and may edit them. */
  headers: Record<string, string>;
  /** Aborting cancels the call (RST_STREAM CANCEL once it is on the wire). */
  signal: AbortSignal;
}

/** A server-streaming answer: its messages in order; `cancel` resets the stream. */
export interface H2Stream<T> extends AsyncIterable<T> {
  cancel(): void;
}

/** A gRPC client of one agent endpoint over a few pooled HTTP/2 sessions. */
export interface AgentH2Client {
  /** True when a session is connected: a call now measures the agent, not a handshake. */
  connected(): boolean;
  unary<Req, Res>(
    path: string,
    message: Req,
    encode: (m: Req) => Uint8Array,
    decode: (b: Uint8Array) => Res,
    options: H2CallOptions,
  ): Promise<Res>;
  serverStream<Req, Res>(
    path: string,
    message: Req,
    encode: (m: Req) => Uint8Array,
    decode: (b: Uint8Array) => Res,
    options: H2CallOptions,
  ): H2Stream<Res>;
  /** Stops new calls; open calls finish (graceful GOAWAY). */
  close(): void;
  /** Ends every session and call now. */
  destroy(): void;
}

/** Options of one endpoint's client. */
export interface AgentH2ClientOptions {
  /** Sessions opened to the endpoint at most; a new one opens only while every open one is busy. */
  sessions: number;
  /** Largest request or response message, bytes (gRPC's default receive limit is 4 MiB). */
  maxMessageBytes: number;
  /** Cap of the reconnect backoff after a failed connection, ms (starts at min(200, cap), doubles). */
  maxReconnectBackoffMs: number;
}

/** What one endpoint's client needs. */
export interface AgentH2ClientDeps {
  /** "host:port". */
  target: string;
  /**
   * TLS options with the CURRENT SVID and bundles, called for every new session (rotation reaches
   * new sessions; open ones keep their handshake); undefined for cleartext HTTP/2.
   */
  tls?: () => ConnectionOptions;
  /** The Egress Guard; every call passes it before a byte is sent. */
  preSend: EgressPreSend;
  /** Told when a session's connection (and TLS handshake) succeeded. */
  onConnect?: () => void;
  clock: Clock;
  logger: Logger;
}

// gRPC over HTTP/2 (PROTOCOL-HTTP2.md): Length-Prefixed-Message = flag(1) length(4) message.
const PREFIX = 5;
const { NGHTTP2_CANCEL, NGHTTP2_REFUSED_STREAM, NGHTTP2_NO_ERROR } = http2.constants;
const MAX_TIMEOUT_DIGITS = 99_999_999; // "TimeoutValue → {positive integer as ASCII string of at most 8 digits}"

/** grpc-timeout for `ms` remaining: the coarsest unit that keeps it within 8 digits. */
export function grpcTimeout(ms: number): string {
  const m = Math.max(1, Math.ceil(ms));
  if (m <= MAX_TIMEOUT_DIGITS) return `${m}m`;
  const s = Math.ceil(m / 1000);
  if (s <= MAX_TIMEOUT_DIGITS) return `${s}S`;
  return `${Math.min(MAX_TIMEOUT_DIGITS, Math.ceil(s / 3600))}H`;
}

/** grpc-message is percent-encoded (PROTOCOL-HTTP2.md "Responses"); a malformed escape is kept as is. */
export function decodeGrpcMessage(value: string | undefined): string {
  if (!value) return "";
  try {
    return decodeURIComponent(value);
  } catch {
    return value;
  }
}

/** The gRPC code of an HTTP status when the response carries no grpc-status (http-grpc-status-mapping.md). */
export { codeFromHttpStatus as codeOfHttpStatus };

function frame(message: Uint8Array): Buffer {
  const out = Buffer.allocUnsafe(PREFIX + message.length);
  out[0] = 0;
  out.writeUInt32BE(message.length, 1);
  out.set(message, PREFIX);
  return out;
}

const header = (v: string | string[] | undefined): string | undefined => (Array.isArray(v) ? v[0] : v);

interface Session {
  h2: http2.ClientHttp2Session;
  ready: boolean;
  /** Our open streams on it. */
  streams: Set<http2.ClientHttp2Stream>;
  /** The agent's SETTINGS (its MAX_CONCURRENT_STREAMS) arrived. */
  settled: boolean;
  /** No new streams (GOAWAY received, closing, failed). */
  retired: boolean;
}

/** Where the messages and the end of one call go. */
interface Sink {
  message(bytes: Uint8Array): void;
  end(error: Error | undefined): void;
  /** The sink has enough queued: stop reading (HTTP/2 flow control holds the agent). */
  full?(): boolean;
}

/** Creates the client of one endpoint. Sessions open on demand. */
export function createAgentH2Client(deps: AgentH2ClientDeps, options: AgentH2ClientOptions): AgentH2Client {
  const log = deps.logger;
  const authority = `${deps.tls ? "https" : "http"}://${deps.target}`;
  const initialBackoff = Math.min(200, options.maxReconnectBackoffMs);
  const sessions: Session[] = [];
  let backoff = initialBackoff;
  let retryAt = 0;
  let lastFailure = "";
  let closed = false;

  function retire(s: Session): void {
    if (!s.retired) {
      s.retired = true;
      const i = sessions.indexOf(s);
      if (i >= 0) sessions.splice(i, 1);
    }
    if (s.streams.size === 0 && !s.h2.closed) s.h2.close();
  }

  function connect(): Session {
    const s: Session = {
      h2: http2.connect(authority, {
        ...(deps.tls ? deps.tls() : {}),
        settings: { enablePush: false },
        // HEADERS and DATA may go out as separate writes: Nagle would hold one for the peer's delayed ACK.
        noDelay: true,
      } as http2.SecureClientSessionOptions),
      streams: new Set(),
      ready: false,
      settled: false,
      retired: false,
    };
    s.h2.unref(); // an idle session never holds the process; streams ref it while they run
    s.h2.once("connect", () => {
      s.ready = true;
      backoff = initialBackoff;
      retryAt = 0;
      deps.onConnect?.();
    });
    s.h2.on("error", (err: Error) => {
      if (!s.ready) {
        // A failed connection: later calls fail fast (undelivered) until the backoff has passed.
        lastFailure = err.message;
        retryAt = deps.clock.now() + backoff * (0.8 + 0.4 * Math.random()); // ±20% jitter, as grpc-js
        backoff = Math.min(options.maxReconnectBackoffMs, backoff * 2);
      }
      log.debug({ target: deps.target, err: err.message }, "agent session failed");
      retire(s);
    });
    s.h2.on("remoteSettings", () => {
      s.settled = true;
      for (const w of waiting.splice(0)) w(); // each takes a slot or queues again, in order
    });
    s.h2.once("goaway", (_code: number, lastStreamId: number) => {
      // Streams above the GOAWAY's last stream id were not processed (RFC 9113 §6.8): end them as
      // refused, so the router re-routes them instead of waiting for their deadline.
      for (const st of s.streams) if (st.pending || (st.id ?? 0) > lastStreamId) st.close(NGHTTP2_REFUSED_STREAM);
      retire(s);
    });
    s.h2.once("close", () => retire(s));
    sessions.push(s);
    return s;
  }

  /**
   * The least busy session with room under the agent's MAX_CONCURRENT_STREAMS; a new one while every
   * open one has calls in flight and the limit of sessions allows. Undefined: every session is at
   * the agent's limit, the call waits for a stream to close (the agent would refuse it).
   */
  function pick(): Session | undefined {
    let best: Session | undefined;
    for (const s of sessions) if (room(s) && (!best || s.streams.size < best.streams.size)) best = s;
    if (best && (best.streams.size === 0 || sessions.length >= options.sessions)) return best;
    if (sessions.length < options.sessions && retryAt <= deps.clock.now()) return connect();
    if (best || sessions.length > 0) return best;
    throw new AgentCallError(Code.Unavailable, `No connection established to ${deps.target} (${lastFailure})`, false);
  }
  // Until the agent's SETTINGS arrive its limit is unknown (RFC 9113 §6.5.2): one stream only.
  const room = (s: Session): boolean =>
    s.settled ? s.streams.size < (s.h2.remoteSettings.maxConcurrentStreams ?? Infinity) : s.streams.size === 0;
  // Calls waiting for a stream slot, in arrival order (a call that ends while waiting leaves the list).
  const waiting: Array<() => void> = [];
  const wakeOne = (): void => {
    waiting.shift()?.();
  };

  /** Control of a started call. */
  interface Started {
    cancel(): void;
    /** Reads again after the sink was full. */
    resume(): void;
  }
  const NOTHING: Started = { cancel: () => undefined, resume: () => undefined };

  function start(path: string, body: Buffer, o: H2CallOptions, sink: Sink): Started {
    if (o.signal.aborted) {
      sink.end(new AgentCallError(Code.Canceled, "call cancelled", false));
      return NOTHING;
    }
    const remaining = o.deadline - deps.clock.now();
    if (remaining <= 0) {
      sink.end(new AgentCallError(Code.DeadlineExceeded, "deadline exceeded before the call was sent", false));
      return NOTHING;
    }
    let s: Session | undefined;
    let stream: http2.ClientHttp2Stream | undefined;
    let done = false;
    let status: { code: Code; message: string } | undefined;
    let httpStatus = 0;
    let streamError: Error | undefined;
    // An incomplete message's chunks, joined once the whole of it (`need` bytes) has arrived.
    let parts: Buffer[] = [];
    let partsLength = 0;
    let need = 0;

    const sent = (): boolean => stream !== undefined && !stream.pending;
    const finish = (err: AgentCallError | undefined): void => {
      if (done) return;
      done = true;
      deps.clock.clearTimeout(timer);
      o.signal.removeEventListener("abort", onAbort);
      const i = waiting.indexOf(open);
      if (i >= 0) waiting.splice(i, 1);
      sink.end(err);
    };
    const reset = (err: AgentCallError): void => {
      // RST_STREAM(CANCEL): the agent sees its call cancelled (grpc-js cancels the handler).
      if (stream && !stream.closed && !stream.destroyed) stream.close(NGHTTP2_CANCEL);
      finish(err);
    };
    const onAbort = (): void => reset(new AgentCallError(Code.Canceled, "call cancelled", sent()));
    const timer = deps.clock.setTimeout(
      () => reset(new AgentCallError(Code.DeadlineExceeded, "deadline exceeded", sent())),
      remaining,
    );
    timer.unref();
    o.signal.addEventListener("abort", onAbort, { once: true });

    function open(): void {
      if (done) return;
      if (closed) return finish(new AgentCallError(Code.Unavailable, "agent client closed", false));
      try {
        s = pick();
        if (!s) {
          waiting.push(open);
          return;
        }
        const left = o.deadline - deps.clock.now();
        const headers: http2.OutgoingHttpHeaders = {
          ...o.headers,
          ":method": "POST",
          ":path": path,
          "content-type": "application/grpc+proto",
          te: "trailers",
          "grpc-timeout": grpcTimeout(left),
        };
        stream = s.h2.request(headers);
      } catch (err) {
        // pick() refused, or request() on a session that got GOAWAY meanwhile: nothing was sent.
        return finish(
          err instanceof AgentCallError
            ? err
            : new AgentCallError(Code.Unavailable, `agent unavailable: ${(err as Error).message}`, false, {
                cause: err,
              }),
        );
      }
      if (s.streams.size === 0) s.h2.ref();
      s.streams.add(stream);
      attach(s, stream);
    }

    /** Reads the answer of `stream` on `session` into the sink. */
    function attach(session: Session, stream: http2.ClientHttp2Stream): void {
      const onMessages = (chunk: Buffer): void => {
        if (httpStatus !== 200 || done) return; // an error page of a proxy, not gRPC messages
        let buf = chunk;
        if (partsLength > 0) {
          parts.push(chunk);
          partsLength += chunk.length;
          if (partsLength < need) return;
          buf = Buffer.concat(parts, partsLength);
          parts = [];
          partsLength = 0;
        }
        while (buf.length >= PREFIX) {
          const len = buf.readUInt32BE(1);
          if (buf[0] !== 0) {
            return reset(
              new AgentCallError(Code.Internal, "agent sent a compressed message (no compression was offered)", true),
            );
          }
          if (len > options.maxMessageBytes) {
            return reset(
              new AgentCallError(
                Code.ResourceExhausted,
                `agent message of ${len} bytes exceeds the limit of ${options.maxMessageBytes}`,
                true,
              ),
            );
          }
          if (buf.length < PREFIX + len) break;
          sink.message(buf.subarray(PREFIX, PREFIX + len));
          buf = buf.subarray(PREFIX + len);
        }
        if (buf.length > 0) {
          parts = [buf];
          partsLength = buf.length;
          need = buf.length >= PREFIX ? PREFIX + buf.readUInt32BE(1) : PREFIX;
        }
        if (sink.full?.() && !done) stream.pause();
      };

      stream.on("response", (h: http2.IncomingHttpHeaders & http2.IncomingHttpStatusHeader) => {
        httpStatus = h[":status"] ?? 0;
        const gs = header(h["grpc-status"]);
        // Trailers-only: the status rides on the response headers (an error before any message).
        if (gs !== undefined)
          status = { code: Number(gs) as Code, message: decodeGrpcMessage(header(h["grpc-message"])) };
        else if (httpStatus === 200 && !String(h["content-type"] ?? "").startsWith("application/grpc")) {
          reset(new AgentCallError(Code.Unknown, `agent answered content-type ${String(h["content-type"])}`, true));
        }
      });
      stream.on("data", onMessages);
      stream.on("trailers", (h: http2.IncomingHttpHeaders) => {
        const gs = header(h["grpc-status"]);
        if (gs !== undefined)
          status = { code: Number(gs) as Code, message: decodeGrpcMessage(header(h["grpc-message"])) };
      });
      stream.on("error", (err: Error) => (streamError = err));
      stream.once("close", () => {
        session.streams.delete(stream);
        if (session.streams.size === 0) session.h2.unref();
        if (session.retired && session.streams.size === 0 && !session.h2.closed) session.h2.close();
        wakeOne(); // a slot opened
        if (done) return;
        const rst = stream.rstCode ?? NGHTTP2_NO_ERROR;
        if (status) {
          if ((status.code as number) === 0 /* OK */) {
            if (partsLength > 0)
              return finish(new AgentCallError(Code.Internal, "agent stream ended inside a message", true));
            return finish(undefined);
          }
          return finish(new AgentCallError(status.code, status.message, true));
        }
        if (rst === NGHTTP2_REFUSED_STREAM)
          // Refused, or above the last stream id of a GOAWAY: the agent did not process it (RFC 9113 §8.7).
          return finish(new AgentCallError(Code.Unavailable, "agent refused the stream", false));
        if (stream.pending || (stream.id === undefined && !httpStatus))
          return finish(
            new AgentCallError(
              Code.Unavailable,
              `No connection established to ${deps.target}: ${streamError?.message ?? lastFailure}`,
              false,
              { cause: streamError },
            ),
          );
        if (httpStatus !== 0 && httpStatus !== 200)
          return finish(new AgentCallError(codeFromHttpStatus(httpStatus), `agent answered HTTP ${httpStatus}`, true));
        finish(
          new AgentCallError(
            rst === NGHTTP2_NO_ERROR && !streamError ? Code.Internal : Code.Unavailable,
            rst === NGHTTP2_NO_ERROR && !streamError
              ? "agent ended the stream without a grpc-status"
              : `agent stream failed: ${streamError?.message ?? `RST_STREAM ${rst}`}`,
            true,
            { cause: streamError },
          ),
        );
      });
      // node:http2 honours the stream's flow-control window: a large body is sent as the agent reads it.
      stream.end(body);
    }

    open();
    return {
      cancel: () => {
        if (!done) reset(new AgentCallError(Code.Canceled, "call cancelled", sent()));
      },
      resume: () => {
        if (!done && stream?.isPaused()) stream.resume();
      },
    };
  }

  /** Encodes and checks size, after the pre-send hook allowed the call. */
  function prepare<Req>(path: string, message: Req, encode: (m: Req) => Uint8Array, o: H2CallOptions) {
    const gate = deps.preSend(path, o.headers, message, o.signal);
    const body = (): Buffer => {
      const bytes = encode(message);
      if (bytes.length > options.maxMessageBytes)
        throw new AgentCallError(
          Code.ResourceExhausted,
          `request message of ${bytes.length} bytes exceeds the limit of ${options.maxMessageBytes}`,
          false,
        );
      return frame(bytes);
    };
    return { gate, body };
  }

  return {
    connected: () => sessions.some((s) => s.ready && !s.retired),

    unary(path, message, encode, decode, o) {
      const run = (body: Buffer) =>
        new Promise<ReturnType<typeof decode>>((resolve, reject) => {
          let answer: Uint8Array | undefined;
          let extra = false;
          start(path, body, o, {
            message(bytes) {
              if (answer) extra = true;
              else answer = bytes;
            },
            end(err) {
              if (err) return reject(err);
              if (!answer || extra)
                return reject(
                  new AgentCallError(
                    Code.Unimplemented,
                    `agent sent ${answer ? "several" : "no"} messages to a unary call`,
                    true,
                  ),
                );
              try {
                resolve(decode(answer));
              } catch (e) {
                reject(
                  new AgentCallError(Code.Internal, `agent answer does not decode: ${(e as Error).message}`, true),
                );
              }
            },
          });
        });
      try {
        const { gate, body } = prepare(path, message, encode, o);
        return gate ? gate.then(() => run(body())) : run(body());
      } catch (e) {
        // The hook's refusal, or a request above the size limit.
        return Promise.reject(e instanceof Error ? e : new Error(String(e)));
      }
    },

    serverStream(path, message, encode, decode, o) {
      type Res = ReturnType<typeof decode>;
      const HIGH_WATER = 16; // messages queued before reading pauses
      const queue: Uint8Array[] = [];
      let ended = false;
      let error: Error | undefined;
      let wake: (() => void) | undefined;
      let call: Started | undefined;
      const cancel = (): void => {
        if (call) return call.cancel();
        ended = true; // not started yet (the hook is deciding): it never will be
        error ??= new AgentCallError(Code.Canceled, "call cancelled", false);
      };
      const notify = (): void => {
        const w = wake;
        wake = undefined;
        w?.();
      };
      const sink: Sink = {
        message(bytes) {
          queue.push(bytes);
          notify();
        },
        end(err) {
          ended = true;
          error = err;
          notify();
        },
        full: () => queue.length >= HIGH_WATER,
      };
      const begin = (body: Buffer): void => {
        if (ended) return;
        call = start(path, body, o, sink);
      };
      try {
        const { gate, body } = prepare(path, message, encode, o);
        if (!gate) begin(body());
        else
          void gate
            .then(() => begin(body()))
            .catch((e: unknown) => {
              if (!ended) sink.end(e as Error);
            });
      } catch (e) {
        sink.end(e as Error);
      }
      async function* messages(): AsyncGenerator<Res> {
        try {
          for (;;) {
            const bytes = queue.shift();
            if (bytes) {
              if (queue.length < HIGH_WATER / 2) call?.resume();
              let value: Res;
              try {
                value = decode(bytes);
              } catch (e) {
                throw new AgentCallError(Code.Internal, `agent message does not decode: ${(e as Error).message}`, true);
              }
              yield value;
              continue;
            }
            if (ended) {
              if (error) throw error;
              return;
            }
            await new Promise<void>((r) => (wake = r));
          }
        } finally {
          // The reader left early (or a message did not decode): the agent stops too.
          if (!ended) cancel();
        }
      }
      const it = messages();
      return {
        [Symbol.asyncIterator]: () => it,
        cancel: () => cancel(),
      };
    },

    close() {
      closed = true;
      for (const s of [...sessions]) retire(s);
      for (const w of waiting.splice(0)) w(); // they end: the client is closed
    },

    destroy() {
      closed = true;
      for (const w of waiting.splice(0)) w();
      for (const s of [...sessions]) {
        retire(s);
        s.h2.destroy();
      }
    },
  };
}
