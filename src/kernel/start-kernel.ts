import { randomBytes } from "node:crypto";
import { mkdirSync } from "node:fs";
import { createServer as createNetServer, type AddressInfo } from "node:net";
import { dirname } from "node:path";
import * as grpc from "@grpc/grpc-js";
import { create, type DescService } from "@bufbuild/protobuf";
import { createContextValues, createHandlerContext, type HandlerContext, type ServiceImpl } from "@connectrpc/connect";
import { pino, type DestinationStream } from "pino";
import type { GrpcInstrumentation } from "@opentelemetry/instrumentation-grpc";
import type { SpanExporter } from "@opentelemetry/sdk-trace-base";
import { ApiKeyService } from "../../gen/nops/kernel/v1/api_key_pb.js";
import { AgentRegistryService } from "../../gen/nops/kernel/v1/agent_registry_pb.js";
import { InvokeRequestSchema, RoutingService, type InvokeResponse } from "../../gen/nops/kernel/v1/routing_pb.js";
import { EventBusService } from "../../gen/nops/kernel/v1/event_bus_pb.js";
import { AdminService, GetStatusRequestSchema } from "../../gen/nops/kernel/v1/admin_pb.js";
import { FederationService } from "../../gen/nops/federation/v1/federation_pb.js";
import { Tier } from "../../gen/nops/dge/v1/dge_pb.js";
import { Health, HealthCheckResponse_ServingStatus as Serving } from "../../gen/grpc/health/v1/health_pb.js";
import { ServerReflection } from "../../gen/grpc/reflection/v1/reflection_pb.js";
import { systemClock, type Clock } from "../common/clock.js";
import { createLogger, type Logger } from "../telemetry/logger.js";
import { createTelemetry } from "../telemetry/telemetry.js";
import { rpcMetricsInterceptor } from "../telemetry/rpc-metrics-interceptor.js";
import { tracingInterceptor } from "../telemetry/tracing-interceptor.js";
import { connectTracingInterceptor } from "../telemetry/connect-tracing-interceptor.js";
import { tracingEventSink } from "../telemetry/tracing-event-sink.js";
import { traceDatabaseTransactions } from "../telemetry/trace-database-transactions.js";
import { createRedactingDestination, scrubRulesFrom } from "../telemetry/redacting-destination.js";
import { openDatabase, type Db } from "../store/database.js";
import { migrateUp } from "../store/migrator.js";
import { MIGRATIONS } from "../store/migrations/index.js";
import { createOutbox } from "../store/outbox.js";
import { createSqliteOutboxStore } from "../store/outbox-store.js";
import { createSqliteTransactor } from "../store/transactor.js";
import { createAuditLog } from "../audit/audit-log.js";
import { createCheckpointer } from "../audit/checkpointer.js";
import { openFileSigner } from "../audit/signer.js";
import { createAuditService } from "../audit/audit-service.js";
import { checkReleaseAtBoot } from "../release/boot-check.js";
import { AuditService } from "../../gen/nops/kernel/v1/audit_pb.js";
import { createRegistry } from "../registry/registry.js";
import { createRegistryService } from "../registry/registry-service.js";
import { bindService, type BoundService } from "../server/bind-service.js";
import {
  correlationInterceptor,
  deadlineInterceptor,
  errorMappingInterceptor,
  loggingInterceptor,
} from "../server/core-interceptors.js";
import type { KernelInterceptor } from "../server/interceptor.js";
import { createStreamShutdown } from "../server/shutdown-interceptor.js";
import { createGrpcServer } from "../server/grpc-server.js";
import { createConnectionGuard, resolveMaxConnections } from "../server/connection-guard.js";
import { carriesCredential, createCredentialGate } from "../identity/credential-gate.js";
import { createReadyzRoute } from "../admin/readyz-route.js";
import { kPeer } from "../server/interceptor.js";
import type { RouteRequest } from "../server/http-server.js";
import { createHttpServer, type HttpRoute, type RawHttpRoute } from "../server/http-server.js";
// The MCP endpoint and the MCP SDK load on the first request to /mcp (docs/architecture.md, "Memory").
import { MCP_PATH, PROTECTED_RESOURCE_PATH } from "../mcp/mcp-options.js";
import { createToolPolicies } from "../mcp/tool-policies.js";
import type { McpEndpoint } from "../mcp/mcp-endpoint.js";
import type { Upstreams } from "../mcp/upstream-servers.js";
import { createAuthorizer } from "../authz/authorizer.js";
import { createHealthService } from "../server/health-service.js";
import { createReflectionService } from "../server/reflection-service.js";
import type { ReadinessReport } from "../common/readiness.js";
import { createKernelIdentity } from "../identity/kernel-identity.js";
import { kPrincipal } from "../identity/principal.js";
import { mayInvoke as mayInvokeCapability } from "../identity/invoke-grant.js";
import { createAuthzInterceptor } from "../authz/authz-interceptor.js";
import { createNonceStore } from "../identity/request-signing/nonce-store.js";
import { createRequestSigningInterceptor } from "../identity/request-signing/request-signing-interceptor.js";
import { createApiKeyService } from "../identity/api-keys/api-key-service.js";
import { createDgeClient, dgeProbeCallOptions, isDgeFailure } from "../clients/dge-client.js";
import { createDependencyBreaker } from "../common/dependency-breaker.js";
import { createRedisClient } from "../store/redis-client.js";
import { createMemoryTrim } from "../server/memory-trim.js";
import { createOverloadGuard, type OverloadSamplers } from "../server/overload-guard.js";
import { createWorkloadApiLiveness } from "../identity/spiffe/workload-api-client.js";
import { startDgeServer, resolveDgeServerOptions, type DgeServer } from "../../packages/reference-dge/src/index.js";
import {
  createEgressGuard,
  createEgressPreSend,
  createConnectEgressInterceptor,
  createGuardedFetch,
  createNatsEgressHook,
  NO_VERDICT_REASONS,
  TENANT_HEADER,
} from "../egress/index.js";
import { createEventBus } from "../events/event-bus.js";
import { followPeerEventLinks } from "./peer-event-links.js";
import { createHubCommandHandler } from "./hub-commands.js";
import { createHubDgePolicies, loadHubDgePolicies } from "./hub-dge-policies.js";
import { createEventBusService } from "../events/event-bus-service.js";
import { createThreadPublishWriter } from "../events/publish-writer.js";
import { createLeafSupervisor, findNatsServer, resolveLeafSupervisorOptions } from "../events/leaf-supervisor.js";
import { createLeafLog, listenLeafSyslog, type LeafLog } from "../events/leaf-log.js";
import type { PrePublishHook } from "../events/outbox-relay.js";
import { createRouter } from "../routing/router.js";
import { createCircuitBreakers } from "../routing/circuit-breakers.js";
import { createFederation } from "../federation/federation.js";
import { createPeerPrincipalInterceptor, createPeerRoutes } from "../federation/index.js";
import { agentCallData } from "../routing/agent-channel-pool.js";
import { createRoutingService } from "../routing/routing-service.js";
import { createRateLimitInterceptor } from "../ratelimit/rate-limit-interceptor.js";
import { createStatusMatrix } from "../admin/status-matrix.js";
import { createAdminService } from "../admin/admin-service.js";
import { createPollingProbe } from "../admin/dependency-probes.js";
import { dependencyProbes, workloadApiProbe } from "./dependency-probes.js";
import { lockDataDir } from "./data-dir-lock.js";
import { createLifecycle } from "./lifecycle.js";
import type { KernelOptions } from "./kernel-options.js";
import { KERNEL_VERSION } from "./version.js";

/** The name the JWKS fetch goes out under (guarded fetch destination `jwks:<origin><path>`). */
const JWKS_DESTINATION = "jwks";

/** How long the /readyz details check may take (authentication may fetch a JWKS). */
const READYZ_DETAILS_TIMEOUT_MS = 5_000;

/**
 * Whether a /readyz caller may see the details: the request runs the chain of
 * AdminService.GetStatus (authentication, rate limit, authorization) as that call would. A request
 * without any credential is not tried unless anonymous callers are allowed: kubelet probes every
 * few seconds are not failed authentications to audit and throttle.
 */
async function mayCallGetStatus(
  services: readonly BoundService[],
  allowAnonymous: boolean,
  req: RouteRequest,
): Promise<boolean> {
  const admin = services.find((s) => s.service === AdminService);
  const getStatus = admin?.impl[AdminService.method.getStatus.localName];
  if (!getStatus) return false;
  const peer = req.peer ?? { address: "", transport: "connect-node" as const, certificates: [] };
  const headers = req.headers ?? {};
  const header = (name: string) => {
    const v = headers[name];
    return Array.isArray(v) ? v[0] : v;
  };
  if (!allowAnonymous && peer.certificates.length === 0 && !carriesCredential(header)) return false;
  const requestHeader = new Headers();
  for (const [name, value] of Object.entries(headers)) {
    if (name.startsWith(":") || value === undefined) continue;
    for (const v of Array.isArray(value) ? value : [value]) requestHeader.append(name, v);
  }
  const ctx = createHandlerContext({
    service: AdminService,
    method: AdminService.method.getStatus,
    protocolName: "connect",
    requestMethod: "GET",
    url: "/readyz",
    timeoutMs: READYZ_DETAILS_TIMEOUT_MS,
    requestHeader,
    contextValues: createContextValues().set(kPeer, peer),
  });
  try {
    await getStatus(create(GetStatusRequestSchema), ctx);
    return true;
  } catch {
    return false;
  } finally {
    ctx.abort();
  }
}

/** A running kernel. */
export interface Kernel {
  readonly options: KernelOptions;
  /** Port the grpc-js server bound. */
  readonly grpcPort: number;
  /** Port the connect-node server bound. */
  readonly httpPort: number;
  /** The services both servers serve, interceptor chain applied (tests drive them in-process). */
  readonly services: readonly BoundService[];
  readiness(): ReadinessReport;
  /** Graceful stop: ends open streams, drains calls, flushes heartbeats, closes everything it opened. */
  stop(): Promise<void>;
  /** Synchronous last resort (second signal, uncaught error): stops child processes now. */
  killChildren(): void;
}

/** The stages of a start, in order; `KernelOverrides.afterStage` observes each. */
export type KernelStage = "database" | "identity" | "egress" | "events" | "routing" | "listen";

/** Test and embedding overrides for `startKernel`. */
export interface KernelOverrides {
  clock?: Clock;
  logDestination?: DestinationStream;
  /** From registerGrpcInstrumentation(), called once by the process entry point. */
  grpcInstrumentation?: GrpcInstrumentation;
  /** Turns tracing on with this exporter instead of the configured one (tests). */
  spanExporter?: SpanExporter;
  /** Where to look for nats-server for a supervised leaf (the CLI passes $PATH). @default "/usr/sbin:/usr/bin" */
  searchPath?: string;
  /** Resource readings of the overload guard instead of the process's own (tests). */
  overloadSamplers?: OverloadSamplers;
  /** Called after each stage has opened what it needs; a throw fails the start there (tests, embedders). */
  afterStage?: (stage: KernelStage) => void | Promise<void>;
}

/** Opens the database and brings its schema up to date. */
export function openKernelDatabase(options: KernelOptions, logger?: Logger): Db {
  const db = openDatabase({ path: options.databasePath });
  try {
    const applied = migrateUp(db, MIGRATIONS);
    if (applied.length) logger?.info({ applied }, "migrations applied");
    return db;
  } catch (err) {
    db.close();
    throw err;
  }
}

/**
 * Wires every component in dependency order and starts both servers. Everything opened is
 * registered with the lifecycle as it opens, so a start that fails at any stage closes what it
 * opened (newest first) before the error reaches the caller.
 */
export async function startKernel(options: KernelOptions, overrides: KernelOverrides = {}): Promise<Kernel> {
  const clock = overrides.clock ?? systemClock;
  // Values that look like secrets or PII are scrubbed from every line, whatever logged them.
  const destination = createRedactingDestination(
    overrides.logDestination ?? pino.destination(1),
    scrubRulesFrom(options.telemetry.redactPatterns),
  );
  const logger = createLogger(options.log, destination);
  const log = logger.child({ component: "kernel" });
  const life = createLifecycle(log);
  const stage = async (name: KernelStage) => overrides.afterStage?.(name);
  try {
    const lock = lockDataDir(options.dataDir);
    life.defer("data dir lock", () => lock.release());
    if (lock.stale) log.warn({ lock: lock.path }, "the previous kernel on this data dir did not stop cleanly");

    const telemetry = createTelemetry(options.telemetry, {
      logger,
      serviceVersion: KERNEL_VERSION,
      grpcInstrumentation: overrides.grpcInstrumentation,
      spanExporter: overrides.spanExporter,
    });
    life.defer("telemetry", () => telemetry.shutdown());
    const tracer = telemetry.tracerProvider && telemetry.tracer("nops-kernel");
    const meter = telemetry.meter("nops-kernel");

    const db = openKernelDatabase(options, log);
    life.defer("database", () => db.close());
    if (tracer) traceDatabaseTransactions(db, tracer);
    const outboxStore = createSqliteOutboxStore(db);
    const transactor = createSqliteTransactor(db);
    const outbox = createOutbox(outboxStore, { source: options.edgeId, clock });
    const events = tracer ? tracingEventSink(outbox, tracer) : outbox;
    const audit = createAuditLog(db, clock);
    // Rows written before the Merkle tree existed (schema 8) become its first leaves.
    const backfilled = audit.catchUp();
    if (backfilled) log.info({ rows: backfilled }, "audit rows hashed into the Merkle tree");
    // A signed release is checked before anything serves; the evidence is audited either way.
    if (options.release.enforce) {
      const release = checkReleaseAtBoot(options.release, audit);
      log.info({ files: release.files, signedBy: release.signedBy, commit: release.sourceCommit }, "release verified");
    }
    // The checkpoint key lives outside the data directory (docs/audit.md).
    mkdirSync(dirname(options.audit.keyFile), { recursive: true, mode: 0o700 });
    const checkpointSigner = openFileSigner({
      path: options.audit.keyFile,
      name: options.audit.origin,
      forbiddenDir: options.dataDir,
    });
    const checkpointer = createCheckpointer(
      { db, audit, signer: checkpointSigner, events, clock, logger: logger.child({ component: "audit" }) },
      { ...options.audit, intervalMs: options.audit.checkpointIntervalMs },
    );
    life.defer("audit checkpoints", () => checkpointer.stop());
    checkpointer.issue().catch((e: unknown) => log.error({ err: e }, "first audit checkpoint failed"));
    const registry = createRegistry({ db, events, audit, clock, logger }, options.registry);
    life.defer("registry", () => registry.close());
    // Every dependency call has a budget and a breaker (admin.dependencies): a hung one is cut off.
    const budgets = options.admin.dependencies;
    const kernelRedis = options.redis.url
      ? createRedisClient({ logger, meter }, { url: options.redis.url, ...budgets.redis })
      : undefined;
    if (kernelRedis) {
      life.defer("redis", () => kernelRedis.close());
      kernelRedis.start();
    }
    const redis = kernelRedis?.client;
    const redisSubscriber = kernelRedis?.subscriber;
    // Trust material only (descriptors, bundles, handshake proofs): the same public bytes this
    // kernel serves at /federation/discover and /federation/bundle, no tenant data, so the Egress
    // Guard is not asked about it (docs/federation.md).
    const federation = createFederation({ db, audit, clock, logger }, options.federation, { edgeId: options.edgeId });
    life.defer("federation", () => federation.stop());
    await stage("database");

    // The JWKS fetch is an outbound call, so it goes through the Egress Guard built below; the
    // verifier fetches lazily (first token), never during this start.
    const jwks: { fetch?: typeof fetch } = {};
    const identity = await createKernelIdentity(
      {
        db,
        audit,
        clock,
        logger,
        meter,
        fetch: (input, init) =>
          (jwks.fetch ?? (() => Promise.reject(new Error("egress guard not ready"))))(input, init),
        // Only the registry's peers' trust domains are trusted beside our own (docs/federation.md).
        federatedBundles: federation.registry,
      },
      options,
    );
    life.defer("identity", () => identity.close());
    const { tls } = identity;
    if (tls && identity.x509) {
      federation.attachIdentity({
        source: identity.x509,
        clientTls: (allowedIds) => tls.clientOptions({ allowedIds }),
      });
    }
    await stage("identity");

    let dgeClientOptions = options.dge.client;
    let dgeServer: DgeServer | undefined;
    if (options.dge.embedded && options.dge.enabled) {
      // The embedded default runs the reference DGE on loopback, so egress still gets a real verdict.
      const key = randomBytes(32).toString("base64url");
      const server = await startDgeServer(
        { clock, logger },
        {
          ...resolveDgeServerOptions({ host: "127.0.0.1", port: 0, keys: { embedded: key } }),
          // The config file's policies with the ones the hub set on top (docs/egress.md, "Where policies come from").
          policies: loadHubDgePolicies(db, options.dge.policies),
        },
      );
      dgeServer = server;
      life.defer("embedded DGE", () => server.close());
      dgeClientOptions = { ...dgeClientOptions, url: server.url, keys: { embedded: key } };
    }
    const dgeBreaker = createDependencyBreaker({ logger, meter, isFailure: isDgeFailure }, "dge", budgets.dge);
    const dge = createDgeClient(
      {
        clock,
        tls: tls?.clientOptions(),
        interceptors: tracer ? [connectTracingInterceptor(tracer)] : [],
        breaker: dgeBreaker,
      },
      dgeClientOptions,
    );
    // The JWKS fetch carries no tenant's data and goes only where identity.jwt.jwksUrl says: the
    // guard allows exactly that destination, named as the guarded fetch names it (origin + path).
    const jwksUrl = options.identity.jwt?.jwksUrl ? new URL(options.identity.jwt.jwksUrl) : undefined;
    const kernelDestinations = jwksUrl ? [`${JWKS_DESTINATION}:${jwksUrl.origin}${jwksUrl.pathname}`] : [];
    const guard = createEgressGuard(
      {
        clock,
        logger,
        meter,
        dge,
        events,
        audit,
        db,
        redis,
        redisSubscriber,
        kernelDestinations,
        tenantLabels: options.telemetry.metrics.tenantLabels,
      },
      options.egress,
    );
    life.defer("egress guard", () => guard.close());
    jwks.fetch = createGuardedFetch(guard, JWKS_DESTINATION) as typeof fetch;
    // Hub set_dge_policy commands change the embedded DGE's policies; an external DGE owns its own.
    const hubDgePolicies = options.dge.embedded
      ? createHubDgePolicies(
          { db, audit, clock, logger, guard, ...(dgeServer ? { dge: dgeServer } : {}) },
          options.dge.policies,
        )
      : undefined;
    await stage("egress");

    // Events: the outbox relays to a NATS leaf (the sidecar, or one supervised here in development).
    let natsUrl = options.nats.url;
    let natsAuth: { natsUser?: string; natsPassword?: string } = {};
    // The leaf's log, read for the publishes its hub link refused (docs/events.md, "Link status"):
    // a supervised leaf's stderr, or the sidecar's syslog on nats.leafLogPort.
    const newLeafLog = (): LeafLog =>
      createLeafLog({ clock, logger: logger.child({ component: "leaf" }), meter }, options.events.edgeId);
    let leafLog: LeafLog | undefined;
    if (natsUrl && options.nats.leafLogPort > 0) {
      leafLog = newLeafLog();
      const listener = await listenLeafSyslog(leafLog, options.nats.leafLogPort);
      life.defer("leaf log listener", () => listener.close());
    }
    if (!natsUrl && options.nats.leaf === "auto") {
      const binary = findNatsServer(overrides.searchPath ?? "/usr/sbin:/usr/bin");
      if (binary) {
        const password = randomBytes(18).toString("base64url");
        const supervisedLog = newLeafLog();
        leafLog = supervisedLog;
        const leaf = createLeafSupervisor(
          { logger, onLogLine: (line) => supervisedLog.handle(line) },
          resolveLeafSupervisorOptions({
            binary,
            dataDir: options.dataDir,
            port: await freePort(),
            edgeDomain: options.events.edgeDomain,
            password,
            hubUrl: options.nats.hubUrl || undefined,
          }),
        );
        // Registered before start: a leaf that starts but never listens is still stopped.
        life.defer(
          "leaf nats-server",
          () => leaf.stop(),
          () => leaf.kill(),
        );
        await leaf.start();
        natsUrl = leaf.url;
        natsAuth = { natsUser: "kernel", natsPassword: password };
      } else {
        log.warn("no nats.url and no nats-server on PATH: events stay in the SQLite outbox until a leaf is configured");
      }
    }
    // Everything in the edge stream is sourced by the hub, so it crosses the edge unless there is no hub.
    const hubBound = options.nats.url !== "" || options.nats.hubUrl !== "";
    const natsEgress = createNatsEgressHook(guard, {
      crossingSubjects: hubBound ? ["nops.events.>", "nops.fed.>"] : [],
    });
    const prePublish: PrePublishHook = async (subject, payload, headers) => {
      const d = await natsEgress(subject, payload, {
        get: (name) => headers[name] ?? "",
        names: () => Object.keys(headers),
      });
      return { allowed: d.allowed, reason: d.reason, retryLater: !d.allowed && NO_VERDICT_REASONS.has(d.reason) };
    };
    // Publish commits on a thread with its own connection, off the event loop, and the relay's PubAcks are
    // recorded there too (docs/events.md); an in-memory database cannot be opened twice, so there (or with
    // events.service.writerThread off) the calls commit on this thread.
    const publishWriter =
      options.databasePath === ":memory:" || !options.events.service.writerThread
        ? undefined
        : createThreadPublishWriter(
            { clock, logger },
            {
              databasePath: options.databasePath,
              idempotencyTtlMs: options.events.idempotencyTtlMs,
              idleMs: options.events.service.writerIdleMs,
            },
          );
    if (publishWriter) life.defer("publish writer", () => publishWriter.close());
    const bus = createEventBus(
      {
        db,
        outbox: outboxStore,
        transactor,
        clock,
        logger,
        meter,
        sink: events,
        prePublish,
        tracer,
        recordPublished: publishWriter?.recordPublished,
        breaker: createDependencyBreaker({ logger, meter }, "nats", budgets.nats),
        // Hub -> edge commands are applied through the registry and key store, audited (docs/events.md).
        commands: createHubCommandHandler({
          peers: federation.registry,
          apiKeys: identity.apiKeys,
          audit,
          ...(hubDgePolicies ? { dgePolicies: hubDgePolicies } : {}),
        }),
      },
      { ...options.events, ...natsAuth, natsUrl: natsUrl || options.events.natsUrl, hubBound },
    );
    // Established peers' agreements are event links too, changed live (docs/events.md, "Kernel -> kernel events").
    const unfollowPeerLinks = followPeerEventLinks(federation.registry, bus);
    life.defer("peer event links", unfollowPeerLinks);
    if (natsUrl) {
      bus.start();
      life.defer("event bus", () => bus.stop());
    }
    await stage("events");

    // Cross-kernel routes: peers' catalogs and forwarding, out through the Egress Guard (docs/federation.md).
    const peerRoutes = createPeerRoutes(
      {
        registry: federation.registry,
        delegations: federation.delegations,
        audit,
        clock,
        logger,
        selfId: () => federation.spiffeId(),
        clientTls: (peerId) => tls?.clientOptions({ allowedIds: [peerId] }),
        egress: createConnectEgressInterceptor(guard, "federation"),
        scoring: options.routing.scoring,
      },
      options.federation,
    );
    life.defer("federation routes", () => peerRoutes.stop());
    const router = createRouter(
      {
        remote: peerRoutes,
        agents: registry,
        // Every agent session accepts only the SPIFFE ID its agent registered with (docs/routing.md),
        // with the SVID current when the session opens.
        ...(tls
          ? {
              tls: (expectedId: string | undefined, onReject: (err: Error) => void) =>
                tls.clientOptions({ ...(expectedId === undefined ? {} : { allowedIds: [expectedId] }), onReject }),
            }
          : {}),
        trustDomain: options.identity.spiffe.trustDomain,
        audit,
        egress: createEgressPreSend(guard, "agent", agentCallData),
        clock,
        logger,
        meter,
      },
      options.routing,
    );
    life.defer("router", () => router.close());

    const probes = dependencyProbes({
      clock,
      db,
      databasePath: options.databasePath,
      bus,
      natsUrl,
      hubBound,
      redis: kernelRedis,
    });
    if (options.dge.enabled) {
      const dgeHealth = createPollingProbe(
        { logger: log },
        {
          name: "dge",
          intervalMs: budgets.dge.probeIntervalMs,
          timeoutMs: budgets.dge.budgetMs,
          breaker: dgeBreaker,
          check: async (signal) =>
            void (await dge.getPolicy({ tenant: "system", tier: Tier.TIER_1 }, dgeProbeCallOptions(signal))),
        },
      );
      probes.dge = dgeHealth.probe;
      dgeHealth.start();
      life.defer("DGE probe", () => dgeHealth.stop());
    }
    if (identity.source === "workload-api" && identity.x509) {
      const liveness = createWorkloadApiLiveness(
        { logger, breaker: createDependencyBreaker({ logger, meter }, "workload-api", budgets.workloadApi) },
        { socket: options.identity.socket },
      );
      life.defer("workload API liveness", () => liveness.stop());
      liveness.start();
      probes["workload-api"] = workloadApiProbe(clock, identity.x509, liveness);
    }
    probes["federation-peers"] = () => federation.probe();
    probes["federation-links"] = () => peerRoutes.probe();
    const overload = createOverloadGuard(
      { logger, meter, samplers: overrides.overloadSamplers },
      options.admin.overload,
    );
    life.defer("overload guard", () => overload.stop());
    overload.start();
    probes.overload = () => overload.status();
    const memoryTrim = createMemoryTrim({ logger, meter }, options.admin.memoryTrim);
    life.defer("memory trim", () => memoryTrim.stop());
    memoryTrim.start();
    const matrix = createStatusMatrix({ probes, events, clock, logger, meter }, options.admin.status);
    matrix.start();
    life.defer("status matrix", () => matrix.stop());
    const readiness = () => matrix.evaluate();
    const actorOf = (ctx: HandlerContext) => ctx.values.get(kPrincipal)?.id ?? "anonymous";
    await stage("routing");

    const streams = createStreamShutdown();
    const rateLimit = createRateLimitInterceptor(
      { redis, events, audit, clock, logger: logger.child({ component: "rate-limit" }), meter, actorOf },
      options.rateLimit,
    );
    const chain: KernelInterceptor[] = [
      // First: an overloaded kernel refuses new work before spending anything on it.
      overload.interceptor,
      ...(tracer ? [tracingInterceptor(tracer)] : []),
      correlationInterceptor(logger.child({ component: "rpc" })),
      loggingInterceptor(),
      rpcMetricsInterceptor(meter),
      errorMappingInterceptor(),
      streams.interceptor,
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
      // A pinned peer kernel becomes a KERNEL_PEER, scoped by its agreement and delegation.
      createPeerPrincipalInterceptor({
        registry: federation.registry,
        delegations: federation.delegations,
        audit,
        clock,
        trustDomain: options.identity.spiffe.trustDomain,
        maxHops: options.federation.maxHops,
      }),
      rateLimit,
      createAuthzInterceptor({ audit, clock, logger: logger.child({ component: "authz" }) }, options.authz),
    ];
    const bind = <S extends DescService>(service: S, impl: ServiceImpl<S>) => bindService(service, impl, chain);
    const routingImpl = createRoutingService({ router }, options.routing.service);
    const services: BoundService[] = [
      bind(
        AgentRegistryService,
        createRegistryService(
          { registry, actorOf, clock, trustDomain: options.identity.spiffe.trustDomain },
          options.registry,
        ),
      ),
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
      bind(RoutingService, routingImpl),
      bind(
        EventBusService,
        createEventBusService(
          { outbox: outboxStore, transactor, clock, logger, bus, prePublish, tracer, writer: publishWriter },
          options.events.service,
        ),
      ),
      bind(
        AdminService,
        createAdminService({
          matrix,
          version: KERNEL_VERSION,
          busLinks: natsUrl ? () => bus.links() : undefined,
          hubLink: leafLog ? () => leafLog.status() : undefined,
        }),
      ),
      bind(AuditService, createAuditService({ audit, checkpointer })),
      bind(FederationService, federation.service(actorOf)),
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
      "/readyz": createReadyzRoute({
        readiness,
        mayReadDetails: (req) => mayCallGetStatus(services, options.authn.allowAnonymous, req),
      }),
      ...federation.routes(),
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
    // The MCP endpoint is built on the first request to it, once the port is known (its resource URI names
    // it): the MCP SDK loads then, so a kernel that never serves MCP never holds it (docs/architecture.md).
    let buildMcp: (() => Promise<McpEndpoint>) | undefined;
    let mcp: Promise<McpEndpoint> | undefined;
    const rawRoutes: Record<string, RawHttpRoute> = {};
    if (options.mcp.enabled) {
      const serve =
        (route: (m: McpEndpoint) => RawHttpRoute): RawHttpRoute =>
        (req, res) => {
          if (!buildMcp) {
            res.writeHead(503, { "retry-after": "1" });
            res.end();
            return;
          }
          const fail = (err: unknown, what: string) => {
            log.error({ err }, what);
            if (!res.headersSent) res.writeHead(500);
            res.end();
          };
          (mcp ??= buildMcp())
            .then(
              (m) => route(m)(req, res),
              (err: unknown) => {
                // Not cached: the next request tries again.
                mcp = undefined;
                fail(err, "MCP endpoint failed to load");
              },
            )
            .catch((err: unknown) => fail(err, "MCP request failed"));
        };
      rawRoutes[MCP_PATH] = serve((m) => (req, res) => m.handle(req, res));
      const metadata = serve((m) => (req, res) => m.metadata(req, res));
      rawRoutes[PROTECTED_RESOURCE_PATH] = metadata;
      rawRoutes[PROTECTED_RESOURCE_PATH + MCP_PATH] = metadata;
    }
    const httpServer = createHttpServer({
      services,
      routes,
      rawRoutes,
      rpcAliases: federation.rpcAliases(),
      limits: options.limits,
      guard: connectionGuard,
      credentialGate,
      // The HTTP port asks for a client certificate but does not require one: browsers, JWT and API
      // key callers and kubelet probes connect without; a presented chain is verified by authn.
      tls: tls && { ...tls.serverOptions(), rejectUnauthorized: false },
      attachTls: tls && ((server) => tls.attachServer(server)),
    });
    // Open streams end with UNAVAILABLE the moment shutdown starts; unary calls drain in the grace.
    life.defer("servers", async () => {
      await streams.endStreams();
      await Promise.all([grpcServer.shutdown(options.shutdownGraceMs), httpServer.shutdown(options.shutdownGraceMs)]);
    });
    registry.start();
    // The gRPC port is the strict mTLS port: no client certificate, no handshake.
    const grpcPort = await grpcServer.listen(
      options.grpc.host,
      options.grpc.port,
      tls ? tls.grpcServerCredentials() : grpc.ServerCredentials.createInsecure(),
    );
    const httpPort = await httpServer.listen(options.http.host, options.http.port);
    if (options.mcp.enabled) {
      const host = options.http.host.includes(":") ? `[${options.http.host}]` : options.http.host;
      const resource = options.mcp.resource || `${tls ? "https" : "http"}://${host}:${httpPort}${MCP_PATH}`;
      // MCP authorization: bearer tokens for /mcp are minted for this resource, not for the kernel's RPCs.
      const mcpAuthn = identity.authnForAudience([resource]);
      // The chain without authentication: the endpoint authenticates every HTTP request first (to answer
      // 401 with WWW-Authenticate) and hands the principal in; rate limit, authz, router and guard run as for Invoke.
      const mcpChain = chain.filter((link) => link !== identity.authn);
      const mcpInvoke = bindService(RoutingService, routingImpl, mcpChain).impl.invoke!;
      const authorizer = createAuthorizer(options.authz);
      // Compiled now, so a policy that does not compile stops the start, not the first tool call.
      const policies = createToolPolicies(options.mcp.policies);
      let upstreams: Upstreams | undefined;
      // One link of the chain run on its own, as if for an Invoke (it throws to refuse).
      const runAsInvoke = async (link: KernelInterceptor, ctx: HandlerContext, input: unknown): Promise<void> => {
        await link(async () => ({ kind: "unary", output: undefined }))({
          service: RoutingService,
          method: RoutingService.method.invoke,
          ctx,
          input,
        });
      };
      const invokePath = `/${RoutingService.typeName}/${RoutingService.method.invoke.name}`;
      buildMcp = async () => {
        const { createMcpEndpoint } = await import("../mcp/mcp-endpoint.js");
        if (options.mcp.upstreams.length > 0 && !upstreams) {
          const { createUpstreams, isUpstreamFailure } = await import("../mcp/upstream-servers.js");
          // External MCP servers: out only through the Egress Guard, failures isolated by the agents' breakers.
          const upstreamBreakers = createCircuitBreakers(
            { clock, isFailure: isUpstreamFailure },
            options.routing.circuitBreaker,
          );
          upstreams = createUpstreams(
            {
              fetch: createGuardedFetch(guard, "mcp-upstream"),
              classify: (r) =>
                guard.check({
                  tenant: r.tenant,
                  transport: "http",
                  destination: r.destination,
                  dataType: "application/json",
                  payload: r.payload,
                  signal: r.signal,
                }),
              circuit: (key) => upstreamBreakers.get(key),
              clock,
              logger,
              tenantHeader: TENANT_HEADER,
            },
            options.mcp.upstreams,
          );
        }
        return createMcpEndpoint(
          {
            agents: registry,
            authenticate: async (ctx) => {
              await runAsInvoke(mcpAuthn, ctx, undefined);
              return ctx.values.get(kPrincipal);
            },
            invoke: async (req, ctx) => (await mcpInvoke(create(InvokeRequestSchema, req), ctx)) as InvokeResponse,
            mayInvoke: (principal, tenant) =>
              authorizer.decide(principal, invokePath, { hasField: true, tenants: [tenant] }).allowed,
            // An agent's invoke grants narrow its tools as they narrow Invoke (docs/identity.md).
            mayCallTool: (principal, tool) => mayInvokeCapability(principal, tool),
            // External tools spend the same rate limit as Invoke: the chain's own link, run on its own.
            admit: (ctx, tenant) => runAsInvoke(rateLimit, ctx, { tenant }),
            audit,
            clock,
            logger,
            version: KERNEL_VERSION,
            tracer,
            policies,
            upstreams,
          },
          {
            ...options.mcp,
            resource,
            authorizationServers: options.mcp.authorizationServers.length
              ? options.mcp.authorizationServers
              : (options.identity.jwt?.issuer ?? []),
            maxMessageBytes: options.limits.maxMessageBytes,
          },
        );
      };
      life.defer("mcp", async () => {
        buildMcp = undefined;
        await (await mcp?.catch(() => undefined))?.close();
        await upstreams?.close();
      });
    }
    federation.setEndpoints(
      `${options.grpc.host}:${grpcPort}`,
      `${tls ? "https" : "http"}://${options.http.host}:${httpPort}`,
    );
    if (tls) {
      federation.start();
      peerRoutes.start();
    }
    await stage("listen");
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
      services,
      readiness,
      stop: () =>
        (stopping ??= (async () => {
          log.info("kernel stopping");
          await life.close();
          log.info("kernel stopped");
        })()),
      killChildren: () => life.killNow(),
    };
  } catch (err) {
    log.error({ err }, "kernel start failed; closing what it opened");
    await life.close();
    throw err;
  }
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
