import { createHash } from "node:crypto";
import { EventEmitter } from "node:events";
import { fromBinary } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { metrics, trace, type MeterProvider, type TracerProvider } from "@opentelemetry/api";
import type { AgentStatus } from "./gen/nops/kernel/v1/agent_registry_pb.js";
import { AckAction, DeliverPolicy } from "./gen/nops/kernel/v1/event_bus_pb.js";
import { EventEnvelopeSchema } from "./gen/nops/events/v1/envelope_pb.js";
import { createAgentServer, type CapabilityDefinition } from "./agent-server.js";
import { AgentStoppedError, ConfigurationError, RegistrationError, toSdkError, type AgentSdkError } from "./errors.js";
import {
  DEFAULT_DEV_DIR,
  DEFAULT_TRUST_DOMAIN,
  agentSpiffeId,
  createIdentityProvider,
  type IdentityOptions,
  type IdentityProvider,
} from "./identity.js";
import { createKernelConnection, type KernelClients } from "./kernel-client.js";
import { createLoadTracker } from "./load-tracker.js";

/** Heartbeat timing. */
export interface HeartbeatOptions {
  /** Interval used until the kernel suggests one (HeartbeatResponse.next_heartbeat_ms). @default 5000 */
  defaultIntervalMs?: number;
  /** Lower bound on the kernel's suggestion. @default 100 */
  minIntervalMs?: number;
  /** Upper bound on the kernel's suggestion. @default 60000 */
  maxIntervalMs?: number;
  /** Deadline of each Heartbeat call. @default 3000 */
  timeoutMs?: number;
  /** Retry interval while the kernel is unreachable (capped by the heartbeat interval). @default 1000 */
  retryIntervalMs?: number;
}

/** Registration retries: every attempt carries the same idempotency key, so retries never duplicate the agent. */
export interface RegistrationOptions {
  /** Deadline of each RegisterAgent attempt. @default 3000 */
  attemptTimeoutMs?: number;
  /** First backoff after an unreachable kernel; doubles up to maxBackoffMs. @default 200 */
  initialBackoffMs?: number;
  /** @default 5000 */
  maxBackoffMs?: number;
  /** Give up (start() rejects) after this long without a successful registration. @default 60000 */
  giveUpAfterMs?: number;
  /**
   * RegisterAgent idempotency key. The same key with the same content returns the same agent; with
   * different content the kernel answers ALREADY_EXISTS (RegistrationError).
   * @default "sdk-" + SHA-256 of (tenant, name, version, endpoint, capabilities, labels)
   */
  idempotencyKey?: string;
}

/** Graceful shutdown. */
export interface DrainOptions {
  /** How long in-flight calls may take to finish before they are cut. @default 30000 */
  timeoutMs?: number;
  /**
   * After deregistering, keep serving calls the kernel dispatched just before it forgot the agent
   * for this long, then refuse new calls. @default 250
   */
  settleMs?: number;
  /** Drain on SIGTERM and SIGINT. @default true */
  handleSignals?: boolean;
  /** After a signal-triggered drain, end the process (exit code 0, 1 if calls were cut). @default true */
  exitAfterSignal?: boolean;
}

/** API key rotation through ApiKeyService.RotateApiKey. */
export interface ApiKeyRotationOptions {
  /** Rotate automatically this often; 0 turns automatic rotation off. @default 0 */
  intervalMs?: number;
  /** How long the previous secret keeps working after a rotation. @default 60000 */
  gracePeriodMs?: number;
  /** Called with the new key after each rotation: persist it, or a restart comes back with a dead key. */
  onRotated?: (newKey: string) => void | Promise<void>;
}

/** Minimal structured logger; the SDK logs nothing unless given one. */
export interface AgentLogger {
  info(msg: string, fields?: Record<string, unknown>): void;
  warn(msg: string, fields?: Record<string, unknown>): void;
  error(msg: string, fields?: Record<string, unknown>): void;
}

/** Everything createAgent takes. Only tenant, name and capabilities are required. */
export interface AgentOptions {
  /** Tenant the agent belongs to (`^[a-z0-9][a-z0-9_-]{0,62}$`). */
  tenant: string;
  /** Agent name; with the dev identity it is also the <name> of its SPIFFE ID. */
  name: string;
  /** Agent version. @default "0.0.0" */
  version?: string;
  /** Capabilities by name, with their handlers. */
  capabilities: Record<string, CapabilityDefinition>;
  /** Registry labels. @default {} */
  labels?: Record<string, string>;
  /**
   * The kernel: `https://host:port`. SVID callers use the gRPC port (strict mTLS); API key callers
   * the HTTP port (the gRPC port refuses handshakes without a client certificate); `http://` for a
   * plaintext kernel (identity `none`).
   * @default "https://localhost:50051", or "https://localhost:8080" with an apiKey
   */
  kernelUrl?: string;
  /**
   * Where the X.509 identity comes from: it serves AgentService over mTLS and, without an apiKey,
   * authenticates calls to the kernel. `none` only against a plaintext kernel.
   * @default workload-api when SPIFFE_ENDPOINT_SOCKET is set, else dev (./data/dev-identity)
   */
  identity?: IdentityOptions | { type: "none" };
  /** An API key (`nops_<keyId>_<secret>`, role AGENT) for calls to the kernel instead of the SVID. */
  apiKey?: string;
  /** API key rotation. */
  apiKeyRotation?: ApiKeyRotationOptions;
  /** Where the AgentService server listens. @default { host: "127.0.0.1", port: 0 } */
  listen?: { host?: string; port?: number };
  /** The endpoint registered with the kernel. @default "<listen.host>:<bound port>" (127.0.0.1 for 0.0.0.0) */
  endpoint?: string;
  /** Heartbeat timing. */
  heartbeat?: HeartbeatOptions;
  /** Registration retries and idempotency. */
  registration?: RegistrationOptions;
  /** Graceful shutdown. */
  drain?: DrainOptions;
  /**
   * Who may invoke the agent, by the caller's SPIFFE ID (undefined over plaintext).
   * @default kernels of the agent's trust domain (spiffe://<td>/nops/kernel/...)
   */
  allowCaller?: (spiffeId: string | undefined) => boolean;
  /** Largest request or response message. @default 4194304 */
  maxMessageBytes?: number;
  /** Tracer provider for the server spans. @default the global one (@opentelemetry/api) */
  tracerProvider?: TracerProvider;
  /** Meter provider for the SDK's metrics. @default the global one (@opentelemetry/api) */
  meterProvider?: MeterProvider;
  /** Logger. @default none */
  logger?: AgentLogger;
}

/** Lifecycle state. */
export type AgentState = "new" | "starting" | "running" | "draining" | "stopped";

/** Options of a publish. */
export interface PublishOptions {
  /** Media type or schema name of the payload. @default "" */
  payloadType?: string;
  headers?: Record<string, string>;
  /** A retry with the same key (per tenant) within its TTL returns the first result. */
  idempotencyKey?: string;
  /** Deadline. @default 10000 */
  timeoutMs?: number;
  signal?: AbortSignal;
}

/** Where a published event was recorded. */
export interface PublishResult {
  /** The event's id (EventEnvelope.id). */
  eventId: string;
  /** The full NATS subject. */
  subject: string;
  /** True when a retry with the same idempotency key returned the first result. */
  duplicate: boolean;
}

/** A delivered event. */
export interface DeliveredEvent {
  subject: string;
  eventId: string;
  type: string;
  payload: Uint8Array;
  payloadType: string;
  headers: Record<string, string>;
  deliveryCount: number;
  streamSequence: bigint;
}

/** Options of a subscription. */
export interface SubscribeOptions {
  /** Subject filter within the tenant ("*" and ">" allowed). @default ">" */
  filter?: string;
  /** "all" retained messages or only "new" ones (when the consumer is created). @default "all" */
  deliverPolicy?: "all" | "new";
  /** Deliveries before dead-lettering. @default the kernel's */
  maxDeliveries?: number;
}

/** A running subscription; the handler's throw NAKs the message (redelivered later). */
export interface Subscription {
  close(): Promise<void>;
}

/** Options of an invoke. */
export interface InvokeOptions {
  contentType?: string;
  /** Deadline of the whole invocation. @default 30000 */
  timeoutMs?: number;
  signal?: AbortSignal;
  /** Running the request twice is harmless: lets the kernel retry and hedge. @default false */
  idempotent?: boolean;
}

/** What an invoke returns. */
export interface InvokeResult {
  payload: Uint8Array;
  contentType: string;
  agentId: string;
  agentName: string;
  attempts: number;
}

/** Events an Agent emits. */
export interface AgentEvents {
  registered: [{ agentId: string; replayed: boolean; reregistered: boolean }];
  heartbeat: [{ status: AgentStatus; nextHeartbeatMs: number }];
  kernelUnavailable: [AgentSdkError];
  apiKeyRotated: [{ keyId: string }];
  draining: [{ reason: string }];
  drained: [{ deregistered: boolean; cutCalls: number }];
  warning: [AgentSdkError];
}

/** A running agent. */
export interface Agent {
  /** Starts serving, registers (retrying idempotently) and starts heartbeats. */
  start(): Promise<void>;
  /** The kernel's id for the agent, once registered (changes when it re-registers after being forgotten). */
  readonly id: string | undefined;
  /** The endpoint registered with the kernel. */
  readonly endpoint: string | undefined;
  readonly state: AgentState;
  /** Publishes an event in the agent's tenant. */
  publish(subject: string, payload: Uint8Array | string, options?: PublishOptions): Promise<PublishResult>;
  /** Consumes a durable consumer of the agent's tenant until closed or drained. */
  subscribe(
    consumer: string,
    handler: (event: DeliveredEvent) => Promise<void> | void,
    options?: SubscribeOptions,
  ): Subscription;
  /** Invokes a capability through the kernel (routing, retries, trace context carried). */
  invoke(capability: string, payload: Uint8Array | string, options?: InvokeOptions): Promise<InvokeResult>;
  /** Rotates the API key now; calls switch to the new key, the old one works for the grace period. */
  rotateApiKey(options?: { gracePeriodMs?: number }): Promise<string>;
  /** Deregisters, stops accepting, finishes in-flight calls, closes. Idempotent. */
  drain(reason?: string): Promise<void>;
  /** Typed clients of the kernel (escape hatch). */
  readonly kernel: KernelClients;
  on<E extends keyof AgentEvents>(event: E, listener: (...args: AgentEvents[E]) => void): this;
  off<E extends keyof AgentEvents>(event: E, listener: (...args: AgentEvents[E]) => void): this;
}

const TENANT = /^[a-z0-9][a-z0-9_-]{0,62}$/;
const API_KEY = /^nops_([0-9a-f]{24})_.+$/;
const sleep = (ms: number, signal?: AbortSignal) =>
  new Promise<void>((resolve) => {
    const t = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => (clearTimeout(t), resolve()), { once: true });
  });
const encode = (p: Uint8Array | string) => (typeof p === "string" ? new TextEncoder().encode(p) : p);
const sorted = (r: Record<string, string>) =>
  Object.fromEntries(Object.entries(r).sort(([a], [b]) => (a < b ? -1 : 1)));

function positive(value: number | undefined, field: string, fallback: number, min = 1): number {
  const v = value ?? fallback;
  if (!Number.isFinite(v) || v < min) throw new ConfigurationError(`${field} must be a number >= ${min} (got ${v})`);
  return v;
}

/**
 * Creates an agent. Nothing happens until start(): then it serves AgentService, registers with
 * the kernel (idempotently), heartbeats at the interval the kernel asks, re-registers when the
 * kernel forgets it, and drains on SIGTERM.
 */
export function createAgent(options: AgentOptions): Agent {
  if (!TENANT.test(options.tenant ?? "")) throw new ConfigurationError(`tenant must match ${TENANT}`);
  if (!options.name) throw new ConfigurationError("name is required");
  const capabilityNames = Object.keys(options.capabilities ?? {});
  if (capabilityNames.length === 0) throw new ConfigurationError("capabilities must name at least one capability");
  for (const [name, def] of Object.entries(options.capabilities)) {
    if (!def.handle && !def.handleStream)
      throw new ConfigurationError(`capabilities.${name} needs handle or handleStream`);
  }
  if (options.identity?.type === "dev" || (options.identity === undefined && !process.env.SPIFFE_ENDPOINT_SOCKET))
    agentSpiffeId(DEFAULT_TRUST_DOMAIN, options.tenant, options.name);
  if (options.apiKey !== undefined && !API_KEY.test(options.apiKey))
    throw new ConfigurationError("apiKey must look like nops_<keyId>_<secret>");
  const hb = {
    defaultIntervalMs: positive(options.heartbeat?.defaultIntervalMs, "heartbeat.defaultIntervalMs", 5000),
    minIntervalMs: positive(options.heartbeat?.minIntervalMs, "heartbeat.minIntervalMs", 100),
    maxIntervalMs: positive(options.heartbeat?.maxIntervalMs, "heartbeat.maxIntervalMs", 60_000),
    timeoutMs: positive(options.heartbeat?.timeoutMs, "heartbeat.timeoutMs", 3000),
    retryIntervalMs: positive(options.heartbeat?.retryIntervalMs, "heartbeat.retryIntervalMs", 1000),
  };
  const reg = {
    attemptTimeoutMs: positive(options.registration?.attemptTimeoutMs, "registration.attemptTimeoutMs", 3000),
    initialBackoffMs: positive(options.registration?.initialBackoffMs, "registration.initialBackoffMs", 200),
    maxBackoffMs: positive(options.registration?.maxBackoffMs, "registration.maxBackoffMs", 5000),
    giveUpAfterMs: positive(options.registration?.giveUpAfterMs, "registration.giveUpAfterMs", 60_000),
  };
  const drainOpts = {
    timeoutMs: positive(options.drain?.timeoutMs, "drain.timeoutMs", 30_000, 0),
    settleMs: positive(options.drain?.settleMs, "drain.settleMs", 250, 0),
    handleSignals: options.drain?.handleSignals ?? true,
    exitAfterSignal: options.drain?.exitAfterSignal ?? true,
  };
  const rotation = {
    intervalMs: positive(options.apiKeyRotation?.intervalMs, "apiKeyRotation.intervalMs", 0, 0),
    gracePeriodMs: positive(options.apiKeyRotation?.gracePeriodMs, "apiKeyRotation.gracePeriodMs", 60_000, 0),
  };
  const identityOptions: IdentityOptions | { type: "none" } =
    options.identity ??
    (process.env.SPIFFE_ENDPOINT_SOCKET
      ? { type: "workload-api", socket: process.env.SPIFFE_ENDPOINT_SOCKET }
      : { type: "dev", dir: DEFAULT_DEV_DIR });
  const kernelUrl = options.kernelUrl ?? (options.apiKey ? "https://localhost:8080" : "https://localhost:50051");
  if (!/^https?:\/\/[^/]+$/.test(kernelUrl)) throw new ConfigurationError("kernelUrl must be http(s)://host:port");
  if (identityOptions.type === "none" && kernelUrl.startsWith("https://"))
    throw new ConfigurationError('identity "none" needs a plaintext kernel (kernelUrl http://...)');
  const log = options.logger;
  const tracer = (options.tracerProvider ?? trace.getTracerProvider()).getTracer("@nops/agent-sdk", "0.1.0");
  const meter = (options.meterProvider ?? metrics.getMeterProvider()).getMeter("@nops/agent-sdk", "0.1.0");
  const instruments = {
    tracer,
    invocations: meter.createCounter("nops.agent.invocations", { description: "Capability calls served" }),
    duration: meter.createHistogram("nops.agent.invocation.duration", {
      description: "Time to serve a capability call",
      unit: "ms",
    }),
    inFlight: meter.createUpDownCounter("nops.agent.invocations.in_flight", { description: "Calls being served" }),
  };
  const heartbeats = meter.createCounter("nops.agent.heartbeats", { description: "Heartbeats by outcome" });
  const registrations = meter.createCounter("nops.agent.registrations", { description: "Registrations by kind" });
  const kernelErrors = meter.createCounter("nops.agent.kernel_call_errors", { description: "Failed kernel calls" });

  const emitter = new EventEmitter();
  const load = createLoadTracker();
  const lifetime = new AbortController();
  let state: AgentState = "new";
  let agentId: string | undefined;
  let endpoint: string | undefined;
  let identity: IdentityProvider | undefined;
  let trustDomain = identityOptions.type === "dev" ? (identityOptions.trustDomain ?? DEFAULT_TRUST_DOMAIN) : undefined;
  let connection: ReturnType<typeof createKernelConnection> | undefined;
  let server: ReturnType<typeof createAgentServer> | undefined;
  let heartbeatTimer: NodeJS.Timeout | undefined;
  let rotationTimer: NodeJS.Timeout | undefined;
  let draining: Promise<void> | undefined;
  let rotating: Promise<string> | undefined;
  let idempotencyKey = options.registration?.idempotencyKey;
  const subscriptions = new Set<Subscription>();
  let lastCutCalls = 0;
  const signalHandlers: [NodeJS.Signals, () => void][] = [];

  const conn = () => {
    if (!connection) throw new AgentStoppedError("agent is not started");
    return connection;
  };
  const warn = (e: AgentSdkError) => {
    log?.warn(e.message, { code: e.code });
    emitter.emit("warning", e);
  };

  const content = () => ({
    name: options.name,
    version: options.version ?? "0.0.0",
    endpoint: endpoint!,
    capabilities: Object.entries(options.capabilities).map(([name, d]) => ({
      name,
      version: d.version ?? "1.0.0",
      attributes: { ...(d.attributes ?? {}) },
    })),
    labels: { ...(options.labels ?? {}) },
  });

  const defaultKey = () => {
    const c = content();
    const canonical = JSON.stringify([
      options.tenant,
      c.name,
      c.version,
      c.endpoint,
      [...c.capabilities]
        .sort((a, b) => (a.name < b.name ? -1 : 1))
        .map((x) => [x.name, x.version, sorted(x.attributes)]),
      sorted(c.labels),
    ]);
    return "sdk-" + createHash("sha256").update(canonical).digest("hex").slice(0, 40);
  };

  // Retries until registered; every attempt carries the same key, so a slow kernel that finishes an
  // attempt the agent gave up on still yields one agent.
  async function register(reregistered: boolean): Promise<void> {
    const started = Date.now();
    let backoff = reg.initialBackoffMs;
    for (;;) {
      if (lifetime.signal.aborted) throw new AgentStoppedError("agent is draining");
      try {
        const res = await conn().registry.registerAgent(
          { tenant: options.tenant, ...content(), idempotencyKey },
          { timeoutMs: reg.attemptTimeoutMs, signal: lifetime.signal },
        );
        agentId = res.agent!.id;
        registrations.add(1, { kind: reregistered ? "reregister" : "register", replayed: res.replayed });
        log?.info("registered", { agentId, replayed: res.replayed, reregistered });
        emitter.emit("registered", { agentId, replayed: res.replayed, reregistered });
        return;
      } catch (err) {
        const e = toSdkError("RegisterAgent", err);
        kernelErrors.add(1, { method: "RegisterAgent", code: Code[e.code ?? Code.Unknown] });
        if (e.code === Code.AlreadyExists) throw new RegistrationError(e.message, { cause: err, code: e.code });
        if (e.code !== Code.Unavailable && e.code !== Code.DeadlineExceeded && e.code !== Code.Unknown) throw e;
        if (Date.now() - started > reg.giveUpAfterMs)
          throw new RegistrationError(`RegisterAgent: kernel unreachable for ${reg.giveUpAfterMs} ms`, {
            cause: err,
            code: e.code,
          });
        emitter.emit("kernelUnavailable", e);
        await sleep(backoff * (0.5 + Math.random()), lifetime.signal);
        backoff = Math.min(backoff * 2, reg.maxBackoffMs);
      }
    }
  }

  const schedule = (ms: number) => {
    if (lifetime.signal.aborted) return;
    heartbeatTimer = setTimeout(() => void beat(), ms);
  };

  async function beat(): Promise<void> {
    if (lifetime.signal.aborted || !agentId) return;
    try {
      const res = await conn().registry.heartbeat(
        { tenant: options.tenant, id: agentId, load: load.snapshot() },
        { timeoutMs: hb.timeoutMs, signal: lifetime.signal },
      );
      heartbeats.add(1, { outcome: "ok" });
      const next = Math.min(hb.maxIntervalMs, Math.max(hb.minIntervalMs, res.nextHeartbeatMs || hb.defaultIntervalMs));
      emitter.emit("heartbeat", { status: res.status, nextHeartbeatMs: next });
      schedule(next);
    } catch (err) {
      if (lifetime.signal.aborted) return;
      const e = toSdkError("Heartbeat", err);
      heartbeats.add(1, { outcome: Code[e.code ?? Code.Unknown] ?? "error" });
      kernelErrors.add(1, { method: "Heartbeat", code: Code[e.code ?? Code.Unknown] });
      if (e.code === Code.NotFound) {
        // The kernel forgot the agent (reaped, deregistered by an operator, or a fresh database).
        log?.warn("kernel no longer knows the agent; registering again", { agentId });
        try {
          await register(true);
          schedule(0);
        } catch (re) {
          warn(toSdkError("RegisterAgent", re));
          schedule(hb.retryIntervalMs);
        }
        return;
      }
      if (e.code === Code.Unavailable || e.code === Code.DeadlineExceeded || e.code === Code.Unknown)
        emitter.emit("kernelUnavailable", e);
      else warn(e);
      schedule(Math.min(hb.retryIntervalMs, hb.defaultIntervalMs));
    }
  }

  function rotateApiKey(o: { gracePeriodMs?: number } = {}): Promise<string> {
    const run = async () => {
      const key = conn().apiKey();
      const keyId = key && API_KEY.exec(key)?.[1];
      if (!keyId) throw new ConfigurationError("rotateApiKey needs an apiKey");
      const grace = o.gracePeriodMs ?? rotation.gracePeriodMs;
      let res;
      try {
        res = await conn().apiKeys.rotateApiKey(
          {
            tenant: options.tenant,
            keyId,
            gracePeriod: { seconds: BigInt(Math.floor(grace / 1000)), nanos: (grace % 1000) * 1_000_000 },
          },
          { timeoutMs: 10_000 },
        );
      } catch (err) {
        throw toSdkError("RotateApiKey", err);
      }
      // Calls from now on carry the new secret; calls already sent carry the old one, which the
      // kernel accepts until the grace period ends: no call fails across the swap.
      conn().setApiKey(res.secret);
      log?.info("api key rotated", { keyId });
      emitter.emit("apiKeyRotated", { keyId });
      await options.apiKeyRotation?.onRotated?.(res.secret);
      return res.secret;
    };
    const next = (rotating ?? Promise.resolve("")).catch(() => "").then(run);
    rotating = next;
    return next;
  }

  const scheduleRotation = () => {
    if (!rotation.intervalMs || lifetime.signal.aborted) return;
    rotationTimer = setTimeout(() => {
      rotateApiKey().then(scheduleRotation, (e: unknown) => {
        warn(toSdkError("RotateApiKey", e));
        scheduleRotation();
      });
    }, rotation.intervalMs);
    rotationTimer.unref();
  };

  async function drain(reason = "drain"): Promise<void> {
    if (state === "new") {
      state = "stopped";
      return;
    }
    draining ??= (async () => {
      state = "draining";
      emitter.emit("draining", { reason });
      log?.info("draining", { reason, inFlight: load.inFlight() });
      lifetime.abort();
      clearTimeout(heartbeatTimer);
      clearTimeout(rotationTimer);
      await Promise.all([...subscriptions].map((s) => s.close()));
      let deregistered = false;
      // Deregister first: the kernel stops routing here, so the calls refused later are none.
      if (agentId && connection) {
        try {
          await connection.registry.deregisterAgent(
            { tenant: options.tenant, id: agentId, reason: `drain: ${reason}` },
            { timeoutMs: 5000 },
          );
          deregistered = true;
        } catch (err) {
          const e = toSdkError("DeregisterAgent", err);
          deregistered = e.code === Code.NotFound;
          if (!deregistered) warn(e);
        }
      }
      await sleep(drainOpts.settleMs);
      server?.stopAccepting();
      const idle = (await server?.waitIdle(drainOpts.timeoutMs)) ?? true;
      const cutCalls = idle ? 0 : (server?.inFlight() ?? 0);
      lastCutCalls = cutCalls;
      await server?.close(idle ? 1000 : 0);
      connection?.close();
      await identity?.close();
      for (const [sig, h] of signalHandlers) process.off(sig, h);
      state = "stopped";
      log?.info("drained", { deregistered, cutCalls });
      emitter.emit("drained", { deregistered, cutCalls });
    })();
    return draining;
  }

  const agent: Agent = {
    get id() {
      return agentId;
    },
    get endpoint() {
      return endpoint;
    },
    get state() {
      return state;
    },
    get kernel() {
      return conn();
    },

    async start() {
      if (state !== "new") throw new AgentStoppedError(`start() called in state ${state}`);
      state = "starting";
      try {
        if (identityOptions.type !== "none") {
          const spiffeId = agentSpiffeId(trustDomain ?? DEFAULT_TRUST_DOMAIN, options.tenant, options.name);
          identity = createIdentityProvider(identityOptions, spiffeId);
          const first = await identity.ready();
          trustDomain = /^spiffe:\/\/([^/]+)/.exec(first.spiffeId)?.[1];
        }
        const allowCaller =
          options.allowCaller ??
          ((id: string | undefined) =>
            identity === undefined || (id !== undefined && id.startsWith(`spiffe://${trustDomain}/nops/kernel/`)));
        server = createAgentServer(
          { identity, capabilities: options.capabilities, load, instruments, allowCaller },
          { maxMessageBytes: positive(options.maxMessageBytes, "maxMessageBytes", 4 * 1024 * 1024) },
        );
        const host = options.listen?.host ?? "127.0.0.1";
        const port = await server.listen(host, options.listen?.port ?? 0);
        endpoint = options.endpoint ?? `${host === "0.0.0.0" || host === "::" ? "127.0.0.1" : host}:${port}`;
        idempotencyKey ??= defaultKey();
        connection = createKernelConnection(identity, {
          url: kernelUrl,
          ...(options.apiKey ? { apiKey: options.apiKey } : {}),
        });
        await register(false);
        state = "running";
        schedule(0);
        scheduleRotation();
        if (drainOpts.handleSignals) {
          for (const sig of ["SIGTERM", "SIGINT"] as const) {
            const h = () => {
              void drain(sig).then(() => {
                if (drainOpts.exitAfterSignal) process.exit(lastCutCalls > 0 ? 1 : 0);
              });
            };
            process.once(sig, h);
            signalHandlers.push([sig, h]);
          }
        }
      } catch (err) {
        lifetime.abort();
        await server?.close(0);
        connection?.close();
        await identity?.close();
        state = "stopped";
        throw err;
      }
    },

    async publish(subject, payload, o = {}) {
      if (state !== "running") throw new AgentStoppedError(`publish in state ${state}`);
      try {
        const res = await conn().events.publish(
          {
            tenant: options.tenant,
            subject,
            payload: encode(payload),
            payloadType: o.payloadType ?? "",
            headers: o.headers ?? {},
            idempotencyKey: o.idempotencyKey ?? "",
          },
          { timeoutMs: o.timeoutMs ?? 10_000, ...(o.signal ? { signal: o.signal } : {}) },
        );
        return { eventId: res.eventId, subject: res.subject, duplicate: res.duplicate };
      } catch (err) {
        throw toSdkError("Publish", err);
      }
    },

    subscribe(consumer, handler, o = {}) {
      if (state !== "running") throw new AgentStoppedError(`subscribe in state ${state}`);
      const stop = new AbortController();
      const loop = (async () => {
        let backoff = 200;
        while (!stop.signal.aborted) {
          try {
            const stream = conn().events.subscribe(
              {
                tenant: options.tenant,
                consumer,
                filter: o.filter ?? "",
                deliverPolicy: o.deliverPolicy === "new" ? DeliverPolicy.NEW : DeliverPolicy.ALL,
                maxDeliveries: o.maxDeliveries ?? 0,
              },
              { signal: stop.signal },
            );
            for await (const res of stream) {
              backoff = 200;
              const m = res.message;
              if (!m) continue;
              const env = fromBinary(EventEnvelopeSchema, m.envelope);
              let action = AckAction.ACK;
              try {
                await handler({
                  subject: m.subject,
                  eventId: m.eventId,
                  type: env.type,
                  payload: env.payload,
                  payloadType: env.payloadType,
                  headers: { ...m.headers },
                  deliveryCount: m.deliveryCount,
                  streamSequence: m.streamSequence,
                });
              } catch {
                action = AckAction.NAK;
              }
              await conn().events.ack(
                { tenant: options.tenant, consumer, ackToken: m.ackToken, action },
                { timeoutMs: 5000 },
              );
            }
          } catch (err) {
            if (stop.signal.aborted) break;
            const e = toSdkError("Subscribe", err);
            if (e.code === Code.PermissionDenied || e.code === Code.InvalidArgument) {
              warn(e);
              break;
            }
            emitter.emit("kernelUnavailable", e);
          }
          await sleep(backoff * (0.5 + Math.random()), stop.signal);
          backoff = Math.min(backoff * 2, 5000);
        }
      })();
      const sub: Subscription = {
        async close() {
          stop.abort();
          await loop.catch(() => undefined);
          subscriptions.delete(sub);
        },
      };
      subscriptions.add(sub);
      return sub;
    },

    async invoke(capability, payload, o = {}) {
      if (state !== "running" && state !== "draining") throw new AgentStoppedError(`invoke in state ${state}`);
      try {
        const res = await conn().routing.invoke(
          {
            tenant: options.tenant,
            capability,
            payload: encode(payload),
            contentType: o.contentType ?? "",
            idempotent: o.idempotent ?? false,
          },
          { timeoutMs: o.timeoutMs ?? 30_000, ...(o.signal ? { signal: o.signal } : {}) },
        );
        return {
          payload: res.payload,
          contentType: res.contentType,
          agentId: res.agentId,
          agentName: res.agentName,
          attempts: res.attempts,
        };
      } catch (err) {
        throw toSdkError("Invoke", err);
      }
    },

    rotateApiKey,
    drain,

    on(event, listener) {
      emitter.on(event, listener as (...a: unknown[]) => void);
      return agent;
    },
    off(event, listener) {
      emitter.off(event, listener as (...a: unknown[]) => void);
      return agent;
    },
  };
  return agent;
}

/** True when the error is a ConnectError with this code (for handlers that call the kernel). */
export function hasCode(err: unknown, code: Code): boolean {
  return err instanceof ConnectError ? err.code === code : (err as { code?: unknown })?.code === code;
}
