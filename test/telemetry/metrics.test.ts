import test from "ava";
import type { ConnectError } from "@connectrpc/connect";
import { Code, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { AgentRegistryService } from "../../gen/nops/kernel/v1/agent_registry_pb.js";
import { DataGovernanceService } from "../../gen/nops/dge/v1/dge_pb.js";
import { createManualClock } from "../../src/common/clock.js";
import { DEFAULT_KERNEL_OPTIONS } from "../../src/kernel/kernel-options.js";
import { createAuditLog } from "../../src/audit/audit-log.js";
import { createEgressGuard, resolveEgressGuardOptions } from "../../src/egress/egress-guard.js";
import { createOutboxRelay } from "../../src/events/outbox-relay.js";
import { createRateLimitInterceptor } from "../../src/ratelimit/rate-limit-interceptor.js";
import { resolveRateLimitOptions } from "../../src/ratelimit/rate-limit-options.js";
import { createRegistry } from "../../src/registry/registry.js";
import { createRegistryService } from "../../src/registry/registry-service.js";
import { bindService } from "../../src/server/bind-service.js";
import { correlationInterceptor, errorMappingInterceptor } from "../../src/server/core-interceptors.js";
import { createHttpServer } from "../../src/server/http-server.js";
import { openDatabase } from "../../src/store/database.js";
import { migrateUp } from "../../src/store/migrator.js";
import { MIGRATIONS } from "../../src/store/migrations/index.js";
import { createOutbox } from "../../src/store/outbox.js";
import { createSqliteOutboxStore } from "../../src/store/outbox-store.js";
import { createSilentLogger } from "../../src/telemetry/logger.js";
import { PROMETHEUS_CONTENT_TYPE, createTelemetry } from "../../src/telemetry/telemetry.js";
import { DEFAULT_TELEMETRY_OPTIONS } from "../../src/telemetry/telemetry-options.js";
import {
  RPC_DURATION_METRIC,
  RPC_REQUESTS_METRIC,
  rpcMetricsInterceptor,
} from "../../src/telemetry/rpc-metrics-interceptor.js";
import { parsePrometheusText, sample } from "./prometheus-text.js";

test("metrics - GET /metrics serves RPC, event-bus, egress and rate-limit metrics in Prometheus text format", async (t) => {
  const logger = createSilentLogger();
  const telemetry = createTelemetry(DEFAULT_TELEMETRY_OPTIONS, { logger, serviceVersion: "9.9.9" });
  const meter = telemetry.meter("nops-kernel");
  const clock = createManualClock(1_700_000_000_000);
  const db = openDatabase({ path: ":memory:" });
  migrateUp(db, MIGRATIONS);
  const events = createOutbox(createSqliteOutboxStore(db), { source: "edge-1", clock });
  const audit = createAuditLog(db, clock);
  const registry = createRegistry({ db, events, audit, clock, logger }, DEFAULT_KERNEL_OPTIONS.registry);
  // The real components register their instruments on the same meter the kernel would give them.
  createOutboxRelay(
    { outbox: createSqliteOutboxStore(db), clock, logger, meter, jetstream: () => undefined },
    {
      edgeId: "edge-1",
      maxInFlight: 1,
      batchSize: 1,
      pollIntervalMs: 1000,
      retryInitialMs: 100,
      retryMaxMs: 1000,
      publishTimeoutMs: 1000,
    },
  );
  const guard = createEgressGuard(
    // Nothing listens on port 9 of loopback: the DGE is unreachable and the guard fails closed.
    {
      clock,
      logger,
      meter,
      events,
      audit,
      db,
      dge: createClient(
        DataGovernanceService,
        createConnectTransport({ baseUrl: "http://127.0.0.1:9", httpVersion: "1.1" }),
      ),
    },
    resolveEgressGuardOptions({ dgeTimeoutMs: 2000 }),
  );
  const chain = [
    rpcMetricsInterceptor(meter),
    correlationInterceptor(logger),
    createRateLimitInterceptor({ events, audit, clock, logger, meter }, resolveRateLimitOptions({})),
    errorMappingInterceptor(),
  ];
  const services = [
    bindService(
      AgentRegistryService,
      createRegistryService({ registry, actorOf: () => "test", clock }, DEFAULT_KERNEL_OPTIONS.registry),
      chain,
    ),
  ];
  const server = createHttpServer({
    services,
    routes: { "/metrics": telemetry.metricsHandler },
    limits: DEFAULT_KERNEL_OPTIONS.limits,
  });
  const port = await server.listen("127.0.0.1", 0);
  t.teardown(async () => {
    await server.shutdown(0);
    await guard.close();
    registry.close();
    db.close();
    await telemetry.shutdown();
  });

  const client = createClient(
    AgentRegistryService,
    createConnectTransport({ baseUrl: `http://127.0.0.1:${port}`, httpVersion: "1.1" }),
  );
  await client.registerAgent({ tenant: "acme", name: "a", version: "1", endpoint: "127.0.0.1:50061" });
  await client.registerAgent({ tenant: "acme", name: "b", version: "1", endpoint: "127.0.0.1:50062" });
  const bad = await t.throwsAsync(
    client.registerAgent({ tenant: "", name: "c", version: "1", endpoint: "127.0.0.1:50063" }),
  );
  t.is((bad as ConnectError).code, Code.InvalidArgument);
  const decision = await guard.check({
    tenant: "acme",
    transport: "http",
    destination: "https://example.com/x",
    dataType: "application/json",
    payload: "{}",
  });
  t.false(decision.allowed);

  const res = await fetch(`http://127.0.0.1:${port}/metrics`);
  t.is(res.status, 200);
  t.is(res.headers.get("content-type"), PROMETHEUS_CONTENT_TYPE);
  const families = parsePrometheusText(await res.text());

  const rpc = "/nops.kernel.v1.AgentRegistryService/RegisterAgent";
  t.is(families.get(RPC_REQUESTS_METRIC)?.type, "counter");
  t.is(sample(families, RPC_REQUESTS_METRIC, { rpc, code: "OK", transport: "connect-node" }), 2);
  t.is(sample(families, RPC_REQUESTS_METRIC, { rpc, code: "INVALID_ARGUMENT", transport: "connect-node" }), 1);
  t.is(families.get(RPC_DURATION_METRIC)?.type, "histogram");
  t.is(sample(families, `${RPC_DURATION_METRIC}_count`, { rpc, code: "OK", transport: "connect-node" }), 2);
  t.is(
    sample(families, `${RPC_DURATION_METRIC}_bucket`, { rpc, code: "OK", transport: "connect-node", le: "+Inf" }),
    2,
  );
  t.true((sample(families, `${RPC_DURATION_METRIC}_sum`, { rpc, code: "OK", transport: "connect-node" }) ?? -1) > 0);

  // Event bus: every outbox row (two registrations, the egress.blocked event) is unacknowledged (NATS absent).
  const rows = (db.prepare("SELECT count(*) AS n FROM outbox").get() as { n: number }).n;
  t.true(rows >= 2);
  t.is(families.get("nops_events_outbox_depth")?.type, "gauge");
  t.is(sample(families, "nops_events_outbox_depth", {}), rows);
  // Egress: one blocked decision because the DGE gave no answer.
  // No tenant label by default (telemetry.metrics.tenantLabels).
  t.is(sample(families, "egress_guard_requests_total", { result: "blocked", tier: "3" }), 1);
  t.true((sample(families, "dge_classification_errors_total", {}, true) ?? 0) >= 1);
  // Rate limit: every call got a decision (the invalid one too: rate limiting runs before validation).
  t.is(sample(families, "nops_ratelimit_decisions_total", { outcome: "allowed" }, true), 3);
  t.is(sample(families, "target_info", { service_name: "nops-kernel", service_version: "9.9.9" }, true), 1);
});

test("metrics - /metrics refuses other methods and HEAD has no body", async (t) => {
  const telemetry = createTelemetry(DEFAULT_TELEMETRY_OPTIONS, { logger: createSilentLogger() });
  t.teardown(() => telemetry.shutdown());
  const answer = (method: string) =>
    new Promise<{ status: number; body: string }>((resolve) => {
      let status = 0;
      telemetry.metricsHandler(
        { method, url: "/metrics" },
        { writeHead: (s) => (status = s), end: (body) => resolve({ status, body }) },
      );
    });
  t.is((await answer("POST")).status, 405);
  t.deepEqual(await answer("HEAD"), { status: 200, body: "" });
});
