import * as grpc from "@grpc/grpc-js";
import { fromBinary, toBinary, create, type DescMessage, type MessageShape } from "@bufbuild/protobuf";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import {
  context as otelContext,
  SpanKind,
  SpanStatusCode,
  trace,
  type Context,
  type Counter,
  type Histogram,
  type Span,
  type Tracer,
  type UpDownCounter,
} from "@opentelemetry/api";
import { W3CTraceContextPropagator } from "@opentelemetry/core";
import {
  HandleRequestSchema,
  HandleResponseSchema,
  HandleStreamRequestSchema,
  HandleStreamResponseSchema,
  type Invocation,
} from "./gen/nops/agent/v1/agent_pb.js";
import { HandlerError } from "./errors.js";
import type { IdentityProvider, TlsIdentity } from "./identity.js";
import type { LoadTracker } from "./load-tracker.js";

/** What a handler learns about the call it serves. */
export interface InvocationContext {
  /** Capability name. */
  capability: string;
  /** Tenant the work is done for. */
  tenant: string;
  /** Media type of the request payload. */
  contentType: string;
  /** The kernel's correlation id. */
  requestId: string;
  /** 1 for the first attempt; higher for retries and hedges. */
  attempt: number;
  /** The call's deadline (the gRPC deadline, else the invocation's), undefined when none. */
  deadline: Date | undefined;
  /** Aborted when the caller cancels or the deadline passes: pass it to everything you await. */
  signal: AbortSignal;
  /** The caller's W3C traceparent, as received. */
  traceparent: string | undefined;
  /** The caller's W3C tracestate, as received. */
  tracestate: string | undefined;
  /** The SDK's server span for this call (a child of the caller's trace); the handler runs inside it. */
  span: Span;
  /** The SPIFFE ID of the caller (the kernel), when the call came over mTLS. */
  callerId: string | undefined;
}

/** A handler's answer: bytes, a string (UTF-8) or bytes with a media type. */
export type HandlerResult = Uint8Array | string | { payload: Uint8Array | string; contentType?: string };

/** Serves one capability call (AgentService.Handle). */
export type CapabilityHandler = (payload: Uint8Array, ctx: InvocationContext) => Promise<HandlerResult> | HandlerResult;

/** Serves one capability call with a stream of chunks (AgentService.HandleStream). */
export type CapabilityStreamHandler = (payload: Uint8Array, ctx: InvocationContext) => AsyncIterable<HandlerResult>;

/** One capability the agent offers. */
export interface CapabilityDefinition {
  /** Version advertised in the registry. @default "1.0.0" */
  version?: string;
  /** Attributes advertised in the registry (model, language, ...). @default {} */
  attributes?: Record<string, string>;
  /** Unary handler (kernel Invoke). At least one of handle / handleStream is required. */
  handle?: CapabilityHandler;
  /** Streaming handler (kernel InvokeStream). */
  handleStream?: CapabilityStreamHandler;
}

/** Instruments the server records into. */
export interface ServerInstruments {
  tracer: Tracer;
  invocations: Counter;
  duration: Histogram;
  inFlight: UpDownCounter;
}

/** The AgentService server. */
export interface AgentServer {
  /** Binds and starts; resolves with the bound port. */
  listen(host: string, port: number): Promise<number>;
  /** Calls still running. */
  inFlight(): number;
  /** Refuses new calls with UNAVAILABLE from now on. */
  stopAccepting(): void;
  /** Resolves when no call runs, or after `timeoutMs` (resolving false). */
  waitIdle(timeoutMs: number): Promise<boolean>;
  /** Closes the listener and connections (in-flight calls are cut after `graceMs`). */
  close(graceMs: number): Promise<void>;
}

const w3c = new W3CTraceContextPropagator();
const PATH = "/nops.agent.v1.AgentService/";

function method<I extends DescMessage, O extends DescMessage>(name: string, i: I, o: O, stream: boolean) {
  return {
    path: PATH + name,
    requestStream: false,
    responseStream: stream,
    requestSerialize: (m: MessageShape<I>) => Buffer.from(toBinary(i, m)),
    requestDeserialize: (b: Buffer) => fromBinary(i, b),
    responseSerialize: (m: MessageShape<O>) => Buffer.from(toBinary(o, m)),
    responseDeserialize: (b: Buffer) => fromBinary(o, b),
  };
}

const SERVICE = {
  Handle: method("Handle", HandleRequestSchema, HandleResponseSchema, false),
  HandleStream: method("HandleStream", HandleStreamRequestSchema, HandleStreamResponseSchema, true),
} as const;

function normalise(r: HandlerResult, fallbackType: string): { payload: Uint8Array; contentType: string } {
  if (typeof r === "string") return { payload: new TextEncoder().encode(r), contentType: fallbackType };
  if (r instanceof Uint8Array) return { payload: r, contentType: fallbackType };
  const payload = typeof r.payload === "string" ? new TextEncoder().encode(r.payload) : r.payload;
  return { payload, contentType: r.contentType ?? fallbackType };
}

/**
 * A grpc-js CertificateProvider that follows the identity: grpc-js calls setSecureContext on its
 * http2 server when notified, so open connections keep their handshake and new ones get the new SVID.
 */
function certificateProvider(first: TlsIdentity) {
  let ca: grpc.experimental.CaCertificateUpdate;
  let id: grpc.experimental.IdentityCertificateUpdate;
  const caL = new Set<grpc.experimental.CaCertificateUpdateListener>();
  const idL = new Set<grpc.experimental.IdentityCertificateUpdateListener>();
  const set = (i: TlsIdentity) => {
    ca = { caCertificate: Buffer.from(i.bundlePem) };
    id = { certificate: Buffer.from(i.certPem), privateKey: Buffer.from(i.keyPem) };
  };
  set(first);
  const provider: grpc.experimental.CertificateProvider & { update(i: TlsIdentity): void } = {
    addCaCertificateListener(l) {
      caL.add(l);
      // grpc-js registers its watcher after adding the listener: a synchronous call would be lost.
      process.nextTick(() => caL.has(l) && l(ca));
    },
    removeCaCertificateListener: (l) => void caL.delete(l),
    addIdentityCertificateListener(l) {
      idL.add(l);
      process.nextTick(() => idL.has(l) && l(id));
    },
    removeIdentityCertificateListener: (l) => void idL.delete(l),
    update(i) {
      set(i);
      for (const l of idL) l(id);
      for (const l of caL) l(ca);
    },
  };
  return provider;
}

function peerSpiffeId(call: grpc.ServerUnaryCall<unknown, unknown> | grpc.ServerWritableStream<unknown, unknown>) {
  const cert = call.getAuthContext?.().sslPeerCertificate;
  return (cert?.subjectaltname ?? "")
    .split(", ")
    .find((s) => s.startsWith("URI:spiffe://"))
    ?.slice(4);
}

/** Creates the AgentService server over grpc-js (mTLS with the agent's SVID, or plaintext without identity). */
export function createAgentServer(
  deps: {
    identity: IdentityProvider | undefined;
    capabilities: Readonly<Record<string, CapabilityDefinition>>;
    load: LoadTracker;
    instruments: ServerInstruments;
    /** Decides whether a caller SPIFFE ID may invoke the agent. */
    allowCaller: (spiffeId: string | undefined) => boolean;
  },
  options: { maxMessageBytes: number },
): AgentServer {
  const { load, instruments } = deps;
  const server = new grpc.Server({
    "grpc.max_receive_message_length": options.maxMessageBytes,
    "grpc.max_send_message_length": options.maxMessageBytes,
  });
  const provider = deps.identity ? certificateProvider(deps.identity.current()) : undefined;
  const unsubscribe = deps.identity?.onUpdate((i) => provider?.update(i));
  let accepting = true;
  const idleWaiters = new Set<() => void>();

  const begin = (
    call: grpc.ServerUnaryCall<unknown, unknown> | grpc.ServerWritableStream<unknown, unknown>,
    inv: Invocation | undefined,
    streaming: boolean,
  ):
    | { error: grpc.ServiceError | Partial<grpc.StatusObject> }
    | { ctx: InvocationContext; def: CapabilityDefinition; parent: Context; done: (failed: boolean) => void } => {
    if (!accepting) return { error: { code: grpc.status.UNAVAILABLE, details: "agent is draining" } };
    const callerId = peerSpiffeId(call);
    if (!deps.allowCaller(callerId))
      return { error: { code: grpc.status.PERMISSION_DENIED, details: "caller is not allowed" } };
    if (!inv) return { error: { code: grpc.status.INVALID_ARGUMENT, details: "invocation is required" } };
    const def = deps.capabilities[inv.capability];
    if (!def || !(streaming ? def.handleStream : def.handle))
      return {
        error: { code: grpc.status.UNIMPLEMENTED, details: `capability ${inv.capability} is not served here` },
      };
    const md = call.metadata;
    const header = (k: string) => {
      const v = md.get(k)[0];
      return typeof v === "string" && v !== "" ? v : undefined;
    };
    const traceparent = header("traceparent") ?? (inv.traceparent || undefined);
    const tracestate = header("tracestate") ?? (inv.tracestate || undefined);
    const parent = w3c.extract(
      otelContext.active(),
      { traceparent, tracestate },
      {
        get: (c: Record<string, string | undefined>, k: string) => c[k],
        keys: (c: Record<string, string | undefined>) => Object.keys(c),
      },
    );
    const span = instruments.tracer.startSpan(
      `AgentService/${streaming ? "HandleStream" : "Handle"} ${inv.capability}`,
      {
        kind: SpanKind.SERVER,
        attributes: {
          "rpc.system": "grpc",
          "rpc.service": "nops.agent.v1.AgentService",
          "rpc.method": streaming ? "HandleStream" : "Handle",
          "nops.capability": inv.capability,
          "nops.tenant": inv.tenant,
          "nops.request_id": inv.requestId,
          "nops.attempt": inv.attempt,
        },
      },
      parent,
    );
    const grpcDeadline = call.getDeadline();
    const deadlineMs =
      grpcDeadline instanceof Date
        ? grpcDeadline.getTime()
        : Number.isFinite(grpcDeadline)
          ? grpcDeadline
          : inv.deadline
            ? timestampDate(inv.deadline).getTime()
            : undefined;
    const abort = new AbortController();
    const timer =
      deadlineMs === undefined
        ? undefined
        : setTimeout(() => abort.abort(new Error("deadline exceeded")), Math.max(0, deadlineMs - Date.now()));
    timer?.unref();
    call.once("cancelled", () => abort.abort(new Error("cancelled by the caller")));
    const started = performance.now();
    load.begin();
    instruments.inFlight.add(1, { capability: inv.capability });
    return {
      def,
      parent: trace.setSpan(parent, span),
      ctx: {
        capability: inv.capability,
        tenant: inv.tenant,
        contentType: inv.contentType,
        requestId: inv.requestId,
        attempt: inv.attempt,
        deadline: deadlineMs === undefined ? undefined : new Date(deadlineMs),
        signal: abort.signal,
        traceparent,
        tracestate,
        span,
        callerId,
      },
      done(failed) {
        clearTimeout(timer);
        const ms = performance.now() - started;
        load.end(ms, failed);
        const attrs = { capability: inv.capability, outcome: failed ? "error" : "ok" };
        instruments.inFlight.add(-1, { capability: inv.capability });
        instruments.invocations.add(1, attrs);
        instruments.duration.record(ms, attrs);
        span.setStatus({ code: failed ? SpanStatusCode.ERROR : SpanStatusCode.OK });
        span.end();
        if (load.inFlight() === 0) for (const w of idleWaiters) w();
      },
    };
  };

  // Handler errors carry no internal detail to the caller unless the handler chose the status.
  const toStatus = (err: unknown, signal: AbortSignal): Partial<grpc.StatusObject> => {
    if (err instanceof HandlerError && err.code !== undefined)
      return { code: err.code as unknown as grpc.status, details: err.message };
    if (signal.aborted) return { code: grpc.status.DEADLINE_EXCEEDED, details: "deadline exceeded or cancelled" };
    return { code: grpc.status.INTERNAL, details: "handler failed" };
  };

  server.addService(SERVICE, {
    Handle(
      call: grpc.ServerUnaryCall<MessageShape<typeof HandleRequestSchema>, unknown>,
      cb: grpc.sendUnaryData<MessageShape<typeof HandleResponseSchema>>,
    ) {
      const b = begin(call, call.request.invocation, false);
      if ("error" in b) return cb(b.error);
      const { ctx, def, parent, done } = b;
      otelContext
        .with(parent, async () => def.handle!(call.request.invocation!.payload, ctx))
        .then(
          (r) => {
            done(false);
            cb(null, create(HandleResponseSchema, normalise(r, ctx.contentType)));
          },
          (err: unknown) => {
            b.ctx.span.recordException(err instanceof Error ? err : String(err));
            done(true);
            cb(toStatus(err, ctx.signal));
          },
        );
    },
    HandleStream(call: grpc.ServerWritableStream<MessageShape<typeof HandleStreamRequestSchema>, unknown>) {
      const b = begin(call, call.request.invocation, true);
      if ("error" in b) {
        call.emit("error", b.error);
        return;
      }
      const { ctx, def, parent, done } = b;
      void otelContext.with(parent, async () => {
        try {
          for await (const chunk of def.handleStream!(call.request.invocation!.payload, ctx)) {
            if (ctx.signal.aborted) throw ctx.signal.reason;
            const msg = create(HandleStreamResponseSchema, normalise(chunk, ctx.contentType));
            // Respect the transport's backpressure instead of buffering a fast generator.
            if (!call.write(msg)) await new Promise((r) => call.once("drain", r));
          }
          done(false);
          call.end();
        } catch (err) {
          ctx.span.recordException(err instanceof Error ? err : String(err));
          done(true);
          call.emit("error", toStatus(err, ctx.signal));
        }
      });
    },
  });

  return {
    listen(host, port) {
      const creds = provider
        ? grpc.experimental.createCertificateProviderServerCredentials(provider, provider, true)
        : grpc.ServerCredentials.createInsecure();
      return new Promise((resolve, reject) =>
        server.bindAsync(`${host}:${port}`, creds, (err, bound) => (err ? reject(err) : resolve(bound))),
      );
    },
    inFlight: () => load.inFlight(),
    stopAccepting() {
      accepting = false;
    },
    waitIdle(timeoutMs) {
      if (load.inFlight() === 0) return Promise.resolve(true);
      return new Promise((resolve) => {
        const finish = (idle: boolean) => {
          clearTimeout(timer);
          idleWaiters.delete(onIdle);
          resolve(idle);
        };
        const onIdle = () => finish(true);
        const timer = setTimeout(() => finish(false), timeoutMs);
        idleWaiters.add(onIdle);
      });
    },
    async close(graceMs) {
      unsubscribe?.();
      await new Promise<void>((resolve) => {
        const force = setTimeout(() => {
          server.forceShutdown();
          resolve();
        }, graceMs);
        server.tryShutdown(() => {
          clearTimeout(force);
          resolve();
        });
      });
    },
  };
}
