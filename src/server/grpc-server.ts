import { once } from "node:events";
import * as net from "node:net";
import type { TLSSocket } from "node:tls";
import * as grpc from "@grpc/grpc-js";
import { create, fromBinary, toBinary, type DescMessage, type DescMethod, type DescService } from "@bufbuild/protobuf";
import { ConnectError, createContextValues, type ContextValues, type HandlerContext } from "@connectrpc/connect";
import type { BoundService } from "./bind-service.js";
import { kPeer, methodPath, type PeerInfo } from "./interceptor.js";
import type { LimitOptions } from "./limit-options.js";
import { MetadataHeaders } from "./metadata-headers.js";
import { derChainFromPeerCertificate } from "./peer-certificates.js";
import { canceled, internalError, invalidArgument, unauthenticated } from "../common/index.js";
import { createConnectionGuard, resolveMaxConnections, type ConnectionGuard } from "./connection-guard.js";
import type { CredentialGate } from "./credential-gate.js";
import { REQUEST_ID_HEADER, requestIdFor } from "./perimeter-headers.js";

/** The native gRPC server: serves bound services with grpc-js. */
export interface GrpcServer {
  /** Binds and starts; resolves with the port actually bound. */
  listen(host: string, port: number, credentials: grpc.ServerCredentials): Promise<number>;
  /** Stops accepting calls, waits up to `graceMs` for in-flight ones, then cancels the rest. */
  shutdown(graceMs: number): Promise<void>;
}

// A request that failed to decode is handed to the handler as this marker, so the caller gets
// INVALID_ARGUMENT instead of the INTERNAL grpc-js would answer for a throwing deserializer.
class UndecodableRequest {
  constructor(readonly reason: string) {}
}

// A request message as grpc-js received it: decoded by the handler, after the credential gate,
// so the body of a call that can only be refused is never parsed.
class EncodedRequest {
  constructor(readonly bytes: Buffer) {}
}

function decodeRequest(schema: DescMessage, value: unknown): unknown {
  if (!(value instanceof EncodedRequest)) return value;
  try {
    return fromBinary(schema, value.bytes);
  } catch (e) {
    return new UndecodableRequest((e as Error).message);
  }
}

const UNAUTHENTICATED = unauthenticated();

function deserializer(schema: DescMessage): (buf: Buffer) => unknown {
  return (buf) => {
    try {
      return fromBinary(schema, buf);
    } catch (e) {
      return new UndecodableRequest((e as Error).message);
    }
  };
}

function serializer(schema: DescMessage): (msg: unknown) => Buffer {
  return (msg) => {
    const bytes = toBinary(schema, create(schema, msg as never));
    return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  };
}

// A handler's response headers and trailers are the metadata grpc-js sends (see handlerContext).
const metadataOf = (headers: Headers): grpc.Metadata => (headers as MetadataHeaders).metadata;

function toServiceError(err: unknown, ctx: HandlerContext): Partial<grpc.StatusObject> {
  // The error-mapping interceptor turns everything into ConnectError; this guards the adapter itself.
  const ce = err instanceof ConnectError ? err : internalError();
  ce.metadata.forEach((value, key) => {
    try {
      ctx.responseTrailer.append(key, value);
    } catch {
      // A value gRPC metadata cannot carry (not printable ASCII) is left out; the status still goes out.
    }
  });
  return { code: ce.code as number, details: ce.rawMessage, metadata: metadataOf(ctx.responseTrailer) };
}

type AnyCall =
  | grpc.ServerUnaryCall<unknown, unknown>
  | grpc.ServerWritableStream<unknown, unknown>
  | grpc.ServerDuplexStream<unknown, unknown>
  | grpc.ServerReadableStream<unknown, unknown>;

// A session's peer (address and TLS chain) cannot change, but grpc-js formats the address and parses
// the certificate again for every call's getPeer() / getAuthContext(): remember the peer per HTTP/2
// session, frozen, as every call's kPeer. The session is reached through grpc-js internals
// (call.call.stream.session); when they differ, every call reads its peer as before.
const peersBySession = new WeakMap<object, PeerInfo>();

function sessionOf(call: AnyCall): object | undefined {
  const session = (call as unknown as { call?: { stream?: { session?: unknown } } }).call?.stream?.session;
  return typeof session === "object" && session !== null ? session : undefined;
}

function peerOf(call: AnyCall): PeerInfo {
  const session = sessionOf(call);
  const known = session && peersBySession.get(session);
  if (known) return known;
  const peer = Object.freeze({
    address: call.getPeer().replace(/^ipv[46]:/, ""),
    transport: "grpc-js" as const,
    certificates: readPeerCertificates(call),
  });
  if (session) peersBySession.set(session, peer);
  return peer;
}

// grpc-js's auth context holds the leaf only (getPeerCertificate() without the chain), so a client
// SVID under an intermediate could never be verified: read the whole chain from the session's TLS
// socket, as the HTTP port does (issue 13 item 16). The auth context is the fallback when the
// session cannot be reached.
function readPeerCertificates(call: AnyCall): Uint8Array[] {
  const socket = (sessionOf(call) as { socket?: Partial<TLSSocket> } | undefined)?.socket;
  if (socket && typeof socket.getPeerCertificate === "function") {
    const cert = socket.getPeerCertificate(true);
    return cert.raw ? derChainFromPeerCertificate(cert) : [];
  }
  const cert = call.getAuthContext().sslPeerCertificate;
  return cert ? derChainFromPeerCertificate(cert) : [];
}

/** Called with each call's peer ("ip:port") so the connection's first-call deadline is lifted. */
type OnCall = (peer: string) => void;

/** Per-server hooks every handler runs before the chain. */
interface Hooks {
  onCall: OnCall;
  /** False: the call carries no credential where one is needed; answered before decoding. */
  admits(call: AnyCall, method: DescMethod, ctx: HandlerContext): boolean;
}

const noDeadline = (): undefined => undefined;

/**
 * A grpc-js call's handler context. Its abort signal is made when first read, and only then listens
 * for grpc-js's "cancelled": most unary calls are answered without anyone reading it, and a controller
 * with a listener cost every call three objects. grpc-js emits "cancelled" for client cancellation and
 * an expired deadline, but also after every answered call: `settled()` stops listening once the answer
 * is on its way, so a finished call costs no error and no abort.
 */
class GrpcCallContext implements HandlerContext {
  readonly requestMethod = "POST";
  readonly protocolName = "grpc";
  readonly url: string;
  readonly timeoutMs: () => number | undefined;
  readonly requestHeader: MetadataHeaders;
  readonly responseHeader = new MetadataHeaders(new grpc.Metadata());
  readonly responseTrailer = new MetadataHeaders(new grpc.Metadata());
  readonly values: ContextValues;
  #controller: AbortController | undefined;
  #onCancel: (() => void) | undefined;
  #settled = false;

  constructor(
    readonly service: DescService,
    readonly method: DescMethod,
    private readonly call: AnyCall,
    peer: PeerInfo,
  ) {
    this.url = methodPath(method);
    const deadline = call.getDeadline();
    const deadlineMs = deadline instanceof Date ? deadline.getTime() : deadline;
    this.timeoutMs = Number.isFinite(deadlineMs) ? () => Math.max(0, deadlineMs - Date.now()) : noDeadline;
    this.requestHeader = new MetadataHeaders(call.metadata);
    this.values = createContextValues().set(kPeer, peer);
  }

  get signal(): AbortSignal {
    if (this.#controller) return this.#controller.signal;
    const controller = (this.#controller = new AbortController());
    if (this.call.cancelled) controller.abort(canceled());
    else if (!this.#settled) {
      this.#onCancel = () => controller.abort(canceled());
      (this.call as NodeJS.EventEmitter).once("cancelled", this.#onCancel);
    }
    return controller.signal;
  }

  /** The answer is on its way: a later "cancelled" is grpc-js closing the call, not the caller leaving. */
  settled(): void {
    this.#settled = true;
    if (this.#onCancel) (this.call as NodeJS.EventEmitter).removeListener("cancelled", this.#onCancel);
  }
}

function handlerContext(bound: BoundService, method: DescMethod, call: AnyCall, hooks: Hooks): GrpcCallContext {
  const peer = peerOf(call);
  hooks.onCall(peer.address);
  return new GrpcCallContext(bound.service, method, call, peer);
}

function unaryHandler(bound: BoundService, method: DescMethod, hooks: Hooks): grpc.handleUnaryCall<unknown, unknown> {
  const impl = bound.impl[method.localName]!;
  return (call, callback) => {
    const ctx = handlerContext(bound, method, call, hooks);
    if (!hooks.admits(call, method, ctx)) return answer(Promise.reject(UNAUTHENTICATED), call, callback, ctx);
    const request = decodeRequest(method.input, call.request);
    const result =
      request instanceof UndecodableRequest
        ? Promise.reject(invalidArgument("request", `cannot decode ${method.input.typeName}: ${request.reason}`))
        : Promise.resolve(impl(request, ctx));
    answer(result, call, callback, ctx);
  };
}

/** Answers a call with one response: the response headers, then the message and trailers or the error. */
function answer(
  result: Promise<unknown>,
  call: grpc.ServerUnaryCall<unknown, unknown> | grpc.ServerReadableStream<unknown, unknown>,
  callback: grpc.sendUnaryData<unknown>,
  ctx: GrpcCallContext,
): void {
  result.then(
    (output) => {
      ctx.settled();
      call.sendMetadata(metadataOf(ctx.responseHeader));
      callback(null, output, metadataOf(ctx.responseTrailer));
    },
    (err: unknown) => {
      ctx.settled();
      call.sendMetadata(metadataOf(ctx.responseHeader));
      callback(toServiceError(err, ctx));
    },
  );
}

async function writeAll(
  call: grpc.ServerWritableStream<unknown, unknown> | grpc.ServerDuplexStream<unknown, unknown>,
  output: AsyncIterable<unknown>,
  ctx: GrpcCallContext,
): Promise<void> {
  let headersSent = false;
  for await (const message of output) {
    if (!headersSent) {
      call.sendMetadata(metadataOf(ctx.responseHeader));
      headersSent = true;
    }
    // Respect HTTP/2 flow control: a slow reader pauses the producer instead of buffering.
    if (!call.write(message) && !ctx.signal.aborted) {
      const abort = new AbortController();
      await Promise.race([
        once(call, "drain", { signal: abort.signal }),
        once(ctx.signal, "abort", { signal: abort.signal }),
      ]).catch(() => undefined);
      abort.abort();
    }
    if (ctx.signal.aborted) return;
  }
  ctx.settled();
  if (!headersSent) call.sendMetadata(metadataOf(ctx.responseHeader));
  call.end(metadataOf(ctx.responseTrailer));
}

function streamingHandler(
  bound: BoundService,
  method: DescMethod,
  hooks: Hooks,
): grpc.handleServerStreamingCall<unknown, unknown> | grpc.handleBidiStreamingCall<unknown, unknown> {
  const impl = bound.impl[method.localName]!;
  const clientStreams = method.methodKind === "bidi_streaming";
  return (call: grpc.ServerWritableStream<unknown, unknown> | grpc.ServerDuplexStream<unknown, unknown>) => {
    const ctx = handlerContext(bound, method, call, hooks);
    const admitted = hooks.admits(call, method, ctx);
    const input = !admitted
      ? undefined
      : clientStreams
        ? readInput(call as grpc.ServerDuplexStream<unknown, unknown>, method)
        : decodeRequest(method.input, (call as grpc.ServerWritableStream<unknown, unknown>).request);
    const run = async () => {
      if (!admitted) throw UNAUTHENTICATED;
      if (input instanceof UndecodableRequest) {
        throw invalidArgument("request", `cannot decode ${method.input.typeName}: ${input.reason}`);
      }
      await writeAll(call, impl(input, ctx) as AsyncIterable<unknown>, ctx);
    };
    run().catch((err: unknown) => {
      ctx.settled();
      if (!call.cancelled) call.emit("error", toServiceError(err, ctx));
    });
  };
}

async function* readInput(
  call: grpc.ServerDuplexStream<unknown, unknown> | grpc.ServerReadableStream<unknown, unknown>,
  method: DescMethod,
): AsyncIterable<unknown> {
  for await (const encoded of call as AsyncIterable<unknown>) {
    const message = decodeRequest(method.input, encoded);
    if (message instanceof UndecodableRequest) {
      throw invalidArgument("request", `cannot decode ${method.input.typeName}: ${message.reason}`);
    }
    yield message;
  }
}

function clientStreamingHandler(
  bound: BoundService,
  method: DescMethod,
  hooks: Hooks,
): grpc.handleClientStreamingCall<unknown, unknown> {
  const impl = bound.impl[method.localName]!;
  return (call, callback) => {
    const ctx = handlerContext(bound, method, call, hooks);
    if (!hooks.admits(call, method, ctx)) return answer(Promise.reject(UNAUTHENTICATED), call, callback, ctx);
    answer(Promise.resolve(impl(readInput(call, method), ctx)), call, callback, ctx);
  };
}

/** Options for the grpc-js server. */
export interface GrpcServerOptions {
  services: readonly BoundService[];
  limits: LimitOptions;
  /** Connection budget shared with the HTTP port. @default a budget of this server's own, from `limits` */
  guard?: ConnectionGuard;
  /** Refuses calls without any credential before their body is decoded (see credential-gate.ts). @default admit all */
  credentialGate?: CredentialGate;
}

/**
 * Credentials whose TLS server gets `handshakeTimeout`: grpc-js builds its secure server from
 * `_getConstructorOptions()` and has no option of its own for it (Node's default is 120 s).
 */
function withHandshakeTimeout(credentials: grpc.ServerCredentials, ms: number): grpc.ServerCredentials {
  if (!credentials._isSecure()) return credentials;
  const wrapped = Object.create(credentials) as grpc.ServerCredentials;
  wrapped._getConstructorOptions = () => ({ ...credentials._getConstructorOptions(), handshakeTimeout: ms });
  return wrapped;
}

/** grpc-js server options for `limits`: sizes, streams, idle sessions, keepalive pings, connection age. */
export function grpcServerOptions(limits: LimitOptions): grpc.ServerOptions {
  return {
    "grpc.max_receive_message_length": limits.maxMessageBytes,
    "grpc.max_send_message_length": limits.maxMessageBytes,
    "grpc.max_concurrent_streams": limits.maxConcurrentStreams,
    "grpc.max_metadata_size": limits.maxHeaderBytes,
    "grpc.keepalive_permit_without_calls": 1,
    // Channelz (call and socket counters nothing here reads) costs allocations on every call.
    "grpc.enable_channelz": 0,
    // A connection with no call for this long gets GOAWAY and is closed.
    "grpc.max_connection_idle_ms": limits.sessionIdleTimeoutMs,
    // Server pings find dead peers and sessions nghttp2 has wedged (no ack: destroyed).
    "grpc.keepalive_time_ms": limits.keepalivePingIntervalMs,
    "grpc.keepalive_timeout_ms": limits.pingTimeoutMs,
    ...(limits.maxConnectionAgeMs > 0
      ? {
          "grpc.max_connection_age_ms": limits.maxConnectionAgeMs,
          "grpc.max_connection_age_grace_ms": limits.requestTimeoutMs,
        }
      : {}),
  };
}

/**
 * Creates a grpc-js server for `services`, with explicit message, stream and metadata limits. The
 * kernel owns the listening socket and hands accepted connections to grpc-js (its connection
 * injector), so the connection budget and the first-call deadline apply before TLS and HTTP/2.
 */
export function createGrpcServer(options: GrpcServerOptions): GrpcServer {
  const { limits } = options;
  const guard =
    options.guard ??
    createConnectionGuard(
      {},
      {
        maxConnections: resolveMaxConnections(limits.maxConnections),
        maxConnectionsPerIp: limits.maxConnectionsPerIp,
      },
    );
  const server = new grpc.Server(grpcServerOptions(limits));
  // Connections that have not made a call yet, by "ip:port": each must make one within
  // headersTimeoutMs (TLS handshake and HTTP/2 preface included) or it is closed.
  const awaitingFirstCall = new Map<string, NodeJS.Timeout>();
  const onCall: OnCall = (peer) => {
    const timer = awaitingFirstCall.get(peer);
    if (timer === undefined) return;
    clearTimeout(timer);
    awaitingFirstCall.delete(peer);
  };
  const gate = options.credentialGate;
  const hooks: Hooks = {
    onCall,
    admits: gate
      ? (call, method, ctx) => {
          const peer = ctx.values.get(kPeer);
          // The id is only needed for a refusal (its audit row and answer): most calls never make one.
          let id: string | undefined;
          const requestId = (): string => (id ??= requestIdFor(call.metadata.get(REQUEST_ID_HEADER)[0]?.toString()));
          const admitted = gate({
            method,
            header: (name) => {
              const v = call.metadata.get(name)[0];
              return v === undefined ? undefined : String(v);
            },
            peerCertificate: peer.certificates.length > 0,
            peer: peer.address,
            requestId,
          });
          // The chain, which echoes the id for admitted calls, never runs for a refused one.
          if (!admitted) ctx.responseHeader.set(REQUEST_ID_HEADER, requestId());
          return admitted;
        }
      : () => true,
  };
  const sockets = new Set<net.Socket>();
  let listener: net.Server | undefined;
  for (const bound of options.services) {
    const definition: Record<string, grpc.MethodDefinition<unknown, unknown>> = {};
    const impl: grpc.UntypedServiceImplementation = {};
    for (const method of bound.service.methods) {
      const requestStream = method.methodKind === "client_streaming" || method.methodKind === "bidi_streaming";
      const responseStream = method.methodKind === "server_streaming" || method.methodKind === "bidi_streaming";
      definition[method.localName] = {
        path: methodPath(method),
        requestStream,
        responseStream,
        requestSerialize: serializer(method.input),
        requestDeserialize: (buf: Buffer) => new EncodedRequest(buf),
        responseSerialize: serializer(method.output),
        responseDeserialize: deserializer(method.output),
        originalName: method.localName,
      };
      impl[method.localName] = responseStream
        ? streamingHandler(bound, method, hooks)
        : requestStream
          ? clientStreamingHandler(bound, method, hooks)
          : unaryHandler(bound, method, hooks);
    }
    server.addService(definition, impl);
  }

  return {
    listen: (host, port, credentials) =>
      new Promise((resolve, reject) => {
        const injector = server.createConnectionInjector(
          withHandshakeTimeout(credentials, limits.tlsHandshakeTimeoutMs),
        );
        const l = net.createServer((socket) => {
          if (!guard.admit(socket, "grpc")) return;
          sockets.add(socket);
          // grpc-js handles errors of the sessions it makes; a reset before that must not crash.
          socket.on("error", () => undefined);
          // The form grpc-js's call.getPeer() gives.
          const peer = `${socket.remoteAddress ?? ""}:${socket.remotePort ?? ""}`;
          const timer = setTimeout(() => {
            awaitingFirstCall.delete(peer);
            guard.reaped("grpc", "headers-timeout");
            socket.destroy();
          }, limits.headersTimeoutMs);
          timer.unref();
          awaitingFirstCall.set(peer, timer);
          socket.once("close", () => {
            sockets.delete(socket);
            onCall(peer);
          });
          injector.injectConnection(socket);
        });
        listener = l;
        l.once("error", reject);
        l.listen(port, host, () => {
          l.off("error", reject);
          resolve((l.address() as net.AddressInfo).port);
        });
      }),
    shutdown: (graceMs) =>
      new Promise((resolve) => {
        listener?.close();
        const timer = setTimeout(() => {
          server.forceShutdown();
          for (const socket of sockets) socket.destroy();
          resolve();
        }, graceMs);
        server.tryShutdown(() => {
          clearTimeout(timer);
          for (const socket of sockets) socket.destroy();
          resolve();
        });
      }),
  };
}
