import { readFileSync } from "node:fs";
import * as grpc from "@grpc/grpc-js";
import type { DescService } from "@bufbuild/protobuf";
import type { HandlerContext, ServiceImpl } from "@connectrpc/connect";
import { ApiKeyService } from "../gen/nops/kernel/v1/api_key_pb.js";
import { AgentRegistryService } from "../gen/nops/kernel/v1/agent_registry_pb.js";
import { Health, HealthCheckResponse_ServingStatus as Serving } from "../gen/grpc/health/v1/health_pb.js";
import { ServerReflection } from "../gen/grpc/reflection/v1/reflection_pb.js";
import { systemClock, type Clock } from "./common/clock.js";
import { ConfigError } from "./common/errors.js";
import { DEFAULT_KERNEL_OPTIONS, resolveKernelOptions, type KernelOptions } from "./config/kernel-options.js";
import { loadRawConfig } from "./config/load-config.js";
import { createLogger, type Logger } from "./telemetry/logger.js";
import { openDatabase, type Db } from "./store/database.js";
import { migrateDown, migrateUp, migrationStatus } from "./store/migrator.js";
import { MIGRATIONS } from "./store/migrations/index.js";
import { createOutbox } from "./store/outbox.js";
import { checkSqliteWritable } from "./store/sqlite-readiness.js";
import { createAuditLog } from "./audit/audit-log.js";
import { createRegistry } from "./registry/registry.js";
import { createRegistryService } from "./registry/registry-service.js";
import { bindService, type BoundService } from "./server/bind-service.js";
import {
  correlationInterceptor,
  deadlineInterceptor,
  errorMappingInterceptor,
  loggingInterceptor,
} from "./server/core-interceptors.js";
import type { KernelInterceptor } from "./server/interceptor.js";
import { createGrpcServer } from "./server/grpc-server.js";
import { createConnectionGuard, resolveMaxConnections } from "./server/connection-guard.js";
import { createCredentialGate } from "./identity/credential-gate.js";
import { createHttpServer, type HttpRoute } from "./server/http-server.js";
import { createHealthService } from "./server/health-service.js";
import { createReflectionService } from "./server/reflection-service.js";
import type { ReadinessReport } from "./server/readiness.js";
import type { DestinationStream } from "pino";
import { randomBytes } from "node:crypto";
import { Redis } from "ioredis";
import { RoutingService } from "../gen/nops/kernel/v1/routing_pb.js";
import { createKernelIdentity } from "./identity/kernel-identity.js";
import { createDgeClient } from "./clients/dge-client.js";
import { startDgeServer, resolveDgeServerOptions, type DgeServer } from "./dge/dge-server.js";
import { createEgressGuard, createGrpcEgressInterceptor, createGuardedFetch } from "./egress/index.js";
import { createServer as createNetServer, type AddressInfo } from "node:net";
import { EventBusService } from "../gen/nops/kernel/v1/event_bus_pb.js";
import { createNatsEgressHook } from "./egress/index.js";
import { createEventBus } from "./events/event-bus.js";
import { createEventBusService } from "./events/event-bus-service.js";
import {
  createLeafSupervisor,
  findNatsServer,
  resolveLeafSupervisorOptions,
  type LeafSupervisor,
} from "./events/leaf-supervisor.js";
import type { PrePublishHook } from "./events/outbox-relay.js";
import { createRouter } from "./routing/router.js";
import { agentCallData } from "./routing/agent-channel-pool.js";
import { AdminService } from "../gen/nops/kernel/v1/admin_pb.js";
import { Tier } from "../gen/nops/dge/v1/dge_pb.js";
import { createStatusMatrix, type DependencyProbe } from "./admin/status-matrix.js";
import { createAdminService } from "./admin/admin-service.js";
import { createPollingProbe, redisProbe } from "./admin/dependency-probes.js";
import { createTelemetry } from "./telemetry/telemetry.js";
import { rpcMetricsInterceptor } from "./telemetry/rpc-metrics-interceptor.js";
import { tracingInterceptor } from "./telemetry/tracing-interceptor.js";
import { connectTracingInterceptor } from "./telemetry/connect-tracing-interceptor.js";
import { tracingEventSink } from "./telemetry/tracing-event-sink.js";
import { traceDatabaseTransactions } from "./telemetry/trace-database-transactions.js";
import { registerGrpcInstrumentation } from "./telemetry/register-instrumentation.js";
import { createRedactingDestination, scrubRulesFrom } from "./telemetry/redacting-destination.js";
import type { GrpcInstrumentation } from "@opentelemetry/instrumentation-grpc";
import type { SpanExporter } from "@opentelemetry/sdk-trace-base";
import { pino } from "pino";
import { createRoutingService } from "./routing/routing-service.js";
import { createRateLimitInterceptor } from "./ratelimit/rate-limit-interceptor.js";
import { createNonceStore } from "./identity/request-signing/nonce-store.js";
import { createRequestSigningInterceptor } from "./identity/request-signing/request-signing-interceptor.js";
import { createApiKeyService } from "./identity/api-keys/api-key-service.js";
import { kPrincipal } from "./identity/principal.js";

function readVersion(): string {
  // src/main.ts runs from src/ (tsx) or dist/src/ (built): package.json is one or two levels up.
  for (const rel of ["../package.json", "../../package.json"]) {
    try {
      const pkg = JSON.parse(readFileSync(new URL(rel, import.meta.url), "utf8")) as {
        name?: string;
        version?: string;
      };
      if (pkg.name === "nops-kernel" && pkg.version) return pkg.version;
    } catch {
      // not at this level
    }
  }
  return "unknown";
}

/** The kernel's version, from package.json. */
export const KERNEL_VERSION = readVersion();

/** A running kernel. */
export interface Kernel {
  readonly options: KernelOptions;
  /** Port the grpc-js server bound. */
  readonly grpcPort: number;
  /** Port the connect-node server bound. */
  readonly httpPort: number;
  readiness(): ReadinessReport;
  /** Graceful stop: drains calls, flushes heartbeats, closes the database. */
  stop(): Promise<void>;
}

/** Test and embedding overrides for `startKernel`. */
export interface KernelOverrides {
  clock?: Clock;
  logDestination?: DestinationStream;
  /** From registerGrpcInstrumentation(), called once by the process entry point. */
  grpcInstrumentation?: GrpcInstrumentation;
  /** Turns tracing on with this exporter instead of the configured one (tests). */
  spanExporter?: SpanExporter;
}

/** Opens the database and brings its schema up to date. */
export function openKernelDatabase(options: KernelOptions, logger?: Logger): Db {
  const db = openDatabase({ path: options.databasePath });
  const applied = migrateUp(db, MIGRATIONS);
  if (applied.length) logger?.info({ applied }, "migrations applied");
  return db;
}

/** Wires every component and starts both servers. */
export async function startKernel(options: KernelOptions, overrides: KernelOverrides = {}): Promise<Kernel> {
  const clock = overrides.clock ?? systemClock;
  // Values that look like secrets or PII are scrubbed from every line, whatever logged them.
  const destination = createRedactingDestination(
    overrides.logDestination ?? pino.destination(1),
    scrubRulesFrom(options.telemetry.redactPatterns),
  );
  const logger = createLogger(options.log, destination);
  const log = logger.child({ component: "kernel" });
  const telemetry = createTelemetry(options.telemetry, {
    logger,
    serviceVersion: KERNEL_VERSION,
    grpcInstrumentation: overrides.grpcInstrumentation,
    spanExporter: overrides.spanExporter,
  });
  const tracer = telemetry.tracerProvider && telemetry.tracer("nops-kernel");
  const db = openKernelDatabase(options, log);
  if (tracer) traceDatabaseTransactions(db, tracer);
  const outbox = createOutbox(db, { source: options.edgeId, clock });
  const events = tracer ? tracingEventSink(outbox, tracer) : outbox;
  const audit = createAuditLog(db, clock);
  const registry = createRegistry({ db, events, audit, clock, logger }, options.registry);
  const meter = telemetry.meter("nops-kernel");
  const closers: (() => Promise<unknown> | void)[] = [];
  const redis = options.redis.url ? connectRedis(options.redis.url, logger) : undefined;
  const redisSubscriber = options.redis.url ? connectRedis(options.redis.url, logger) : undefined;
  if (redis)
    closers.push(
      () => redis.quit().catch(() => redis.disconnect()),
      () => redisSubscriber?.disconnect(),
    );

  // The Egress Guard must exist before anything that calls out; identity's JWKS fetch is one.
  let guardedJwksFetch: typeof fetch = () => Promise.reject(new Error("egress guard not ready"));
  const identity = await createKernelIdentity(
    { db, audit, clock, logger, meter, fetch: (input, init) => guardedJwksFetch(input, init) },
    options,
  );
  closers.push(() => identity.close());
  const { tls } = identity;

  let dgeClientOptions = options.dge.client;
  let dgeServer: DgeServer | undefined;
  if (options.dge.embedded && options.dge.enabled) {
    // The embedded default runs the reference DGE on loopback, so egress still gets a real verdict.
    const key = randomBytes(32).toString("base64url");
    dgeServer = await startDgeServer(
      { clock, logger: logger.child({ component: "dge-reference" }) },
      resolveDgeServerOptions({ host: "127.0.0.1", port: 0, keys: { embedded: key } }),
    );
    dgeClientOptions = { ...dgeClientOptions, url: dgeServer.url, keys: { embedded: key } };
    closers.push(() => dgeServer?.close());
  }
  const dge = createDgeClient(
    { clock, tls: tls?.clientOptions(), interceptors: tracer ? [connectTracingInterceptor(tracer)] : [] },
    dgeClientOptions,
  );
  const guard = createEgressGuard(
    { clock, logger, meter, dge, events, audit, db, redis, redisSubscriber },
    options.egress,
  );
  closers.push(() => guard.close());
  guardedJwksFetch = createGuardedFetch(guard, "jwks") as typeof fetch;

  // Events: the outbox relays to a NATS leaf (the sidecar, or one supervised here in development).
  let natsUrl = options.nats.url;
  let natsAuth: { natsUser?: string; natsPassword?: string } = {};
  let leaf: LeafSupervisor | undefined;
  if (!natsUrl && options.nats.leaf === "auto") {
    const binary = findNatsServer(`${process.env.PATH ?? ""}:/usr/sbin`);
    if (binary) {
      const password = randomBytes(18).toString("base64url");
      leaf = createLeafSupervisor(
        { logger },
        resolveLeafSupervisorOptions({
          binary,
          dataDir: options.dataDir,
          port: await freePort(),
          edgeDomain: options.events.edgeDomain,
          password,
          hubUrl: options.nats.hubUrl || undefined,
        }),
      );
      await leaf.start();
      closers.push(() => leaf?.stop());
      natsUrl = leaf.url;
      natsAuth = { natsUser: "kernel", natsPassword: password };
    } else {
      log.warn("no nats.url and no nats-server on PATH: events stay in the SQLite outbox until a leaf is configured");
    }
  }
  // Everything in the edge stream is sourced by the hub, so it crosses the edge unless there is no hub.
  const hubBound = options.nats.url !== "" || options.nats.hubUrl !== "";
  const natsEgress = createNatsEgressHook(guard, { crossingSubjects: hubBound ? ["nops.events.>"] : [] });
  const prePublish: PrePublishHook = async (subject, payload, headers) => {
    const d = await natsEgress(subject, payload, { get: (name) => headers[name] ?? "" });
    return { allowed: d.allowed, reason: d.reason };
  };
  const bus = createEventBus(
    { db, clock, logger, meter, sink: events, prePublish, tracer },
    { ...options.events, ...natsAuth, natsUrl: natsUrl || options.events.natsUrl },
  );
  if (natsUrl) {
    bus.start();
    closers.push(() => bus.stop());
  }

  const router = createRouter(
    {
      agents: registry,
      credentials: tls ? tls.grpcChannelCredentials() : grpc.credentials.createInsecure(),
      interceptors: [createGrpcEgressInterceptor(guard, "agent", agentCallData)],
      clock,
      logger,
      meter,
    },
    options.routing,
  );
  closers.push(() => router.close());

  // One probe per dependency; the matrix turns them into capability modes (docs/observability.md).
  const busProblem = (dependency: string) => bus.degradations().find((d) => d.dependency === dependency);
  const probes: Record<string, DependencyProbe> = {
    sqlite: () => checkSqliteWritable(db, options.databasePath),
    "nats-leaf": () => {
      if (!natsUrl)
        return { name: "nats-leaf", state: "down", detail: "no NATS leaf configured: events are kept in the outbox" };
      const p = busProblem("nats") ?? busProblem("nats-stream");
      if (p) return { name: "nats-leaf", state: p.dependency === "nats" ? "down" : "degraded", detail: p.reason };
      // The bus records a degradation only after its first attempt settles (a normal start emits
      // no degraded event), so ask it directly whether it is connected yet.
      return bus.connection()
        ? { name: "nats-leaf", state: "ok" }
        : { name: "nats-leaf", state: "down", detail: `connecting to ${natsUrl}` };
    },
  };
  if (hubBound) {
    probes["hub-link"] = () => {
      const p = busProblem("hub");
      return p ? { name: "hub-link", state: "down", detail: p.reason } : { name: "hub-link", state: "ok" };
    };
  }
  if (redis) probes.redis = redisProbe(redis);
  const dgeHealth = createPollingProbe(
    { logger: log },
    {
      name: "dge",
      intervalMs: 5000,
      timeoutMs: 2000,
      check: async (signal) => void (await dge.getPolicy({ tenant: "system", tier: Tier.TIER_1 }, { signal })),
    },
  );
  if (options.dge.enabled) {
    probes.dge = dgeHealth.probe;
    dgeHealth.start();
    closers.push(() => dgeHealth.stop());
  }
  const x509 = identity.x509;
  if (identity.source === "workload-api" && x509) {
    probes["workload-api"] = () => {
      const conn = x509.connection?.() ?? { connected: true };
      if (conn.connected) return { name: "workload-api", state: "ok" };
      const notAfter = x509.current()?.svid.notAfter ?? 0;
      // Unreachable agent: keep serving on the current SVID until it expires.
      return notAfter > clock.now()
        ? {
            name: "workload-api",
            state: "degraded",
            detail: `${conn.detail ?? "unreachable"}; SVID valid until ${new Date(notAfter).toISOString()}`,
          }
        : { name: "workload-api", state: "down", detail: `${conn.detail ?? "unreachable"}; SVID expired` };
    };
  }
  const matrix = createStatusMatrix({ probes, events, clock, logger, meter }, options.admin.status);
  matrix.start();
  closers.push(() => matrix.stop());
  const readiness = () => matrix.evaluate();
  const actorOf = (ctx: HandlerContext) => ctx.values.get(kPrincipal)?.id ?? "anonymous";

  const chain: KernelInterceptor[] = [
    ...(tracer ? [tracingInterceptor(tracer)] : []),
    correlationInterceptor(logger.child({ component: "rpc" })),
    loggingInterceptor(),
    rpcMetricsInterceptor(meter),
    errorMappingInterceptor(),
    deadlineInterceptor(options.limits.maxDeadlineMs),
    createRequestSigningInterceptor(
      {
        nonces: createNonceStore({ redis, clock, logger }),
        audit,
        clock,
        logger: logger.child({ component: "request-signing" }),
      },
      options.requestSigning,
    ),
    identity.authn,
    createRateLimitInterceptor(
      { redis, events, audit, clock, logger: logger.child({ component: "rate-limit" }), meter, actorOf },
      options.rateLimit,
    ),
    identity.authz,
  ];
  const bind = <S extends DescService>(service: S, impl: ServiceImpl<S>) => bindService(service, impl, chain);
  const services: BoundService[] = [
    bind(AgentRegistryService, createRegistryService({ registry, actorOf, clock }, options.registry)),
    bind(
      ApiKeyService,
      createApiKeyService({
        db,
        store: identity.apiKeys,
        audit,
        logger: logger.child({ component: "api-keys" }),
        options: identity.apiKeyOptions,
      }),
    ),
    bind(RoutingService, createRoutingService({ router }, options.routing.service)),
    bind(
      EventBusService,
      createEventBusService({ db, clock, logger, bus, prePublish, tracer }, options.events.service),
    ),
    bind(AdminService, createAdminService({ matrix, version: KERNEL_VERSION })),
  ];
  const servingNames = new Set(["", ...services.map((s) => s.service.typeName)]);
  const probe = (service: string) =>
    servingNames.has(service) ? (readiness().ready ? Serving.SERVING : Serving.NOT_SERVING) : undefined;
  services.push(bind(Health, createHealthService(probe)));
  if (options.reflection) {
    services.push(bind(ServerReflection, createReflectionService(services.map((s) => s.service))));
  }

  const json = (res: Parameters<HttpRoute>[1], status: number, body: unknown) => {
    res.writeHead(status, { "content-type": "application/json", "cache-control": "no-store" });
    res.end(JSON.stringify(body));
  };
  const routes: Record<string, HttpRoute> = {
    "/healthz": (_req, res) => json(res, 200, { status: "alive", version: KERNEL_VERSION }),
    "/metrics": telemetry.metricsHandler,
    "/readyz": (_req, res) => {
      const report = readiness();
      json(res, report.ready ? 200 : 503, report);
    },
  };

  // One connection budget for both ports (docs/hardening.md).
  const connectionGuard = createConnectionGuard(
    { meter, logger: logger.child({ component: "connections" }) },
    {
      maxConnections: resolveMaxConnections(options.limits.maxConnections),
      maxConnectionsPerIp: options.limits.maxConnectionsPerIp,
    },
  );
  // Calls with no credential at all are refused before their body is read (docs/hardening.md).
  const credentialGate = createCredentialGate(
    { audit, clock, logger: logger.child({ component: "authn" }) },
    options.authn,
  );
  const grpcServer = createGrpcServer({ services, limits: options.limits, guard: connectionGuard, credentialGate });
  const httpServer = createHttpServer({
    services,
    routes,
    limits: options.limits,
    guard: connectionGuard,
    credentialGate,
    // The HTTP port asks for a client certificate but does not require one: browsers, JWT and API
    // key callers and kubelet probes connect without; a presented chain is verified by authn.
    tls: tls && { ...tls.serverOptions(), rejectUnauthorized: false },
    attachTls: tls && ((server) => tls.attachServer(server)),
  });
  registry.start();
  let grpcPort = 0;
  let httpPort = 0;
  try {
    // The gRPC port is the strict mTLS port: no client certificate, no handshake.
    grpcPort = await grpcServer.listen(
      options.grpc.host,
      options.grpc.port,
      tls ? tls.grpcServerCredentials() : grpc.ServerCredentials.createInsecure(),
    );
    httpPort = await httpServer.listen(options.http.host, options.http.port);
  } catch (err) {
    await grpcServer.shutdown(0);
    registry.close();
    for (const close of closers.reverse()) await close();
    db.close();
    throw err;
  }
  log.info(
    {
      grpc: `${options.grpc.host}:${grpcPort}`,
      http: `${options.http.host}:${httpPort}`,
      tls: identity.source !== "none",
      identity: identity.source,
      edgeId: options.edgeId,
      database: options.databasePath,
      version: KERNEL_VERSION,
    },
    "kernel started",
  );

  let stopping: Promise<void> | undefined;
  return {
    options,
    grpcPort,
    httpPort,
    readiness,
    stop: () =>
      (stopping ??= (async () => {
        log.info("kernel stopping");
        await Promise.all([grpcServer.shutdown(options.shutdownGraceMs), httpServer.shutdown(options.shutdownGraceMs)]);
        registry.close();
        for (const close of closers.reverse()) await close();
        await telemetry.shutdown();
        db.close();
        log.info("kernel stopped");
      })()),
  };
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createNetServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address() as AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

// Commands fail fast instead of queueing while Redis is down, so callers fall back to memory.
function connectRedis(url: string, logger: Logger): Redis {
  const log = logger.child({ component: "redis" });
  const client = new Redis(url, {
    enableOfflineQueue: false,
    commandTimeout: 250,
    maxRetriesPerRequest: 1,
    retryStrategy: (n) => Math.min(n * 200, 2000),
  });
  let down = false;
  client.on("error", (err: Error) => {
    if (!down) log.warn({ err: err.message }, "redis unreachable; using in-memory fallbacks");
    down = true;
  });
  client.on("ready", () => {
    if (down) log.info("redis reachable again");
    down = false;
  });
  return client;
}

/** Loads options from an optional file and the environment (SPIFFE_ENDPOINT_SOCKET included). */
export function loadKernelOptions(file: string | undefined, env: Record<string, string | undefined>): KernelOptions {
  const raw = loadRawConfig({ file, env, defaults: DEFAULT_KERNEL_OPTIONS });
  const socket = env.SPIFFE_ENDPOINT_SOCKET;
  if (socket) {
    const identity = (raw.identity ??= {}) as Record<string, unknown>;
    identity.socket ??= socket;
  }
  return resolveKernelOptions(raw);
}

const USAGE = `usage: nops-kernel <command> [--config <file>]

commands:
  serve                     start the kernel (embedded defaults: SQLite under ./data)
  migrate up|down|status    apply, revert (--steps N, default 1) or list schema migrations
  dge                       run the reference Data Governance Engine (dgeServer section)
  audit verify              check the hash chain of the audit log
  version                   print the version

config: --config <file> (YAML or JSON) or NOPS_CONFIG; every option also as NOPS_<PATH>,
e.g. NOPS_GRPC_PORT=50051 NOPS_REGISTRY_HEARTBEAT_TTL_MS=15000 (see README.md).
`;

function flag(args: string[], name: string): string | undefined {
  const i = args.indexOf(name);
  if (i === -1) return undefined;
  const value = args[i + 1];
  if (value === undefined || value.startsWith("--")) throw new ConfigError(`${name} needs a value`);
  args.splice(i, 2);
  return value;
}

/** The command line: reads argv and the environment (the only place that does). */
export async function main(argv: string[], env: Record<string, string | undefined> = process.env): Promise<number> {
  const out = (s: string) => process.stdout.write(s + "\n");
  const args = [...argv];
  try {
    const configFile = flag(args, "--config") ?? env.NOPS_CONFIG;
    const steps = flag(args, "--steps");
    const [command, sub, ...rest] = args;
    if (rest.length) throw new ConfigError(`unexpected argument ${rest[0]}`);
    switch (command) {
      case "version":
        out(KERNEL_VERSION);
        return 0;
      case "serve": {
        // Patches grpc-js before the server exists; disabled again when tracing is off.
        const grpcInstrumentation = registerGrpcInstrumentation();
        const kernel = await startKernel(loadKernelOptions(configFile, env), { grpcInstrumentation });
        await new Promise<void>((resolve) => {
          const stop = () => resolve();
          process.once("SIGTERM", stop);
          process.once("SIGINT", stop);
        });
        await kernel.stop();
        return 0;
      }
      case "dge": {
        // The reference Data Governance Engine as its own process (what a newcomer or a test runs).
        const options = loadKernelOptions(configFile, env);
        if (!options.dgeServer)
          throw new ConfigError("dge needs a dgeServer section in the config file (at least dgeServer.keys)");
        const logger = createLogger(options.log);
        const server = await startDgeServer(
          { clock: systemClock, logger: logger.child({ component: "dge-reference" }) },
          options.dgeServer,
        );
        logger.info({ url: server.url }, "reference DGE listening");
        await new Promise<void>((resolve) => {
          process.once("SIGTERM", () => resolve());
          process.once("SIGINT", () => resolve());
        });
        await server.close();
        return 0;
      }
      case "migrate": {
        const options = loadKernelOptions(configFile, env);
        const db = openDatabase({ path: options.databasePath });
        try {
          if (sub === "up") out(`applied: ${migrateUp(db, MIGRATIONS).join(", ") || "nothing (up to date)"}`);
          else if (sub === "down") {
            const n = steps === undefined ? 1 : Number(steps);
            if (!Number.isInteger(n) || n < 1)
              throw new ConfigError(`--steps must be a positive integer (got ${steps})`);
            out(`reverted: ${migrateDown(db, MIGRATIONS, n).join(", ") || "nothing (no migrations applied)"}`);
          } else if (sub === "status") {
            const s = migrationStatus(db, MIGRATIONS);
            out(`schema version ${s.current} of ${s.latest}`);
            for (const m of s.applied)
              out(`  applied  ${String(m.version).padStart(4, "0")} ${m.name}  ${new Date(m.appliedAt).toISOString()}`);
            for (const m of s.pending) out(`  pending  ${String(m.version).padStart(4, "0")} ${m.name}`);
          } else throw new ConfigError(`migrate needs up, down or status (got ${sub ?? "nothing"})`);
        } finally {
          db.close();
        }
        return 0;
      }
      case "audit": {
        if (sub !== "verify") throw new ConfigError(`audit needs verify (got ${sub ?? "nothing"})`);
        const options = loadKernelOptions(configFile, env);
        const db = openKernelDatabase(options);
        try {
          const result = createAuditLog(db, systemClock).verify();
          out(
            result.ok
              ? `audit log intact: ${result.checked} rows verified`
              : `audit log TAMPERED at row ${result.badSeq}: ${result.reason} (${result.checked} rows verified before it)`,
          );
          return result.ok ? 0 : 1;
        } finally {
          db.close();
        }
      }
      case undefined:
      case "help":
      case "--help":
        out(USAGE);
        return command === undefined ? 2 : 0;
      default:
        throw new ConfigError(`unknown command ${command}`);
    }
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`nops-kernel: ${err.message}\n`);
      return 2;
    }
    throw err;
  }
}
