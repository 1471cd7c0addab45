import test from "ava";
import { fromBinary } from "@bufbuild/protobuf";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { createNoopMeter } from "@opentelemetry/api";
import {
  DegradedModeActivatedSchema,
  DegradedModeRecoveredSchema,
} from "../../gen/nops/events/v1/degraded_events_pb.js";
import { EventEnvelopeSchema } from "../../gen/nops/events/v1/envelope_pb.js";
import {
  AdminService,
  CapabilityMode,
  Criticality,
  DependencyState,
  Readiness,
} from "../../gen/nops/kernel/v1/admin_pb.js";
import { createAdminService } from "../../src/admin/admin-service.js";
import { redisProbe } from "../../src/admin/dependency-probes.js";
import { createStatusMatrix, type DependencyProbe } from "../../src/admin/status-matrix.js";
import { resolveStatusMatrixOptions } from "../../src/admin/status-matrix-options.js";
import { createManualClock } from "../../src/common/clock.js";
import { ConfigError } from "../../src/common/errors.js";
import { DEFAULT_KERNEL_OPTIONS } from "../../src/kernel/kernel-options.js";
import { bindService } from "../../src/server/bind-service.js";
import { createHttpServer } from "../../src/server/http-server.js";
import type { DependencyState as State } from "../../src/common/readiness.js";
import { openDatabase } from "../../src/store/database.js";
import { migrateUp } from "../../src/store/migrator.js";
import { MIGRATIONS } from "../../src/store/migrations/index.js";
import { createOutbox, type EventSink, type KernelEvent } from "../../src/store/outbox.js";
import { createSqliteOutboxStore } from "../../src/store/outbox-store.js";
import { createSilentLogger } from "../../src/telemetry/logger.js";
import { createTelemetry } from "../../src/telemetry/telemetry.js";
import { DEFAULT_TELEMETRY_OPTIONS } from "../../src/telemetry/telemetry-options.js";
import { parsePrometheusText, sample } from "../telemetry/prometheus-text.js";

const DEPENDENCIES = ["sqlite", "nats-leaf", "hub-link", "redis", "dge", "workload-api"] as const;

/** Fake probes whose state the test sets, and a recording event sink. */
function setup(options = resolveStatusMatrixOptions({})) {
  const states = new Map<string, { state: State; detail?: string }>(DEPENDENCIES.map((d) => [d, { state: "ok" }]));
  const probes: Record<string, DependencyProbe> = Object.fromEntries(
    DEPENDENCIES.map((name) => [name, () => ({ name, ...states.get(name)! })]),
  );
  const events: KernelEvent[] = [];
  let failAppends = false;
  const sink: EventSink = {
    append(e) {
      if (failAppends) throw new Error("SQLITE_IOERR: disk I/O error");
      events.push(e);
      return { id: events.length, eventId: `e${events.length}`, subject: `nops.events.${e.tenant}.${e.type}` };
    },
  };
  const clock = createManualClock(1_700_000_000_000);
  const matrix = createStatusMatrix(
    { probes, events: sink, clock, logger: createSilentLogger(), meter: createNoopMeter() },
    options,
  );
  const set = (name: string, state: State, detail?: string) =>
    states.set(name, { state, ...(detail ? { detail } : {}) });
  return { matrix, events, clock, set, failAppends: (on: boolean) => (failAppends = on) };
}

const modeOf = (report: ReturnType<ReturnType<typeof setup>["matrix"]["evaluate"]>, capability: string) =>
  report.capabilities.find((c) => c.name === capability)?.mode;

test("status matrix - everything ok is ready with every capability normal and no events", (t) => {
  const { matrix, events } = setup();
  const r = matrix.evaluate();
  t.true(r.ready);
  t.is(r.status, "ready");
  t.deepEqual(
    r.dependencies.map((d) => d.name),
    [...DEPENDENCIES],
  );
  t.true(r.capabilities.every((c) => c.mode === "normal"));
  t.is(events.length, 0);
});

test("status matrix - once started, it re-evaluates on every tick of the clock until stopped", (t) => {
  const options = resolveStatusMatrixOptions({});
  const { matrix, clock, set } = setup(options);
  matrix.start();
  t.true(matrix.current().ready);
  set("sqlite", "down", "disk I/O error");
  clock.advance(options.intervalMs - 1);
  t.true(matrix.current().ready, "no tick yet: the last report stands");
  clock.advance(1);
  t.false(matrix.current().ready, "the tick saw SQLite down");
  matrix.stop();
  set("sqlite", "ok");
  clock.advance(options.intervalMs * 3);
  t.false(matrix.current().ready, "no tick after stop()");
  t.is(clock.pendingTimers(), 0);
});

test("status matrix - NATS down: event bus degraded on the outbox, kernel ready but degraded", (t) => {
  const { matrix, events, set } = setup();
  matrix.evaluate();
  set("nats-leaf", "down", "connection refused 127.0.0.1:4222");
  const r = matrix.evaluate();
  t.true(r.ready);
  t.is(r.status, "degraded");
  t.is(modeOf(r, "event-bus"), "degraded");
  t.regex(r.capabilities.find((c) => c.name === "event-bus")!.reason ?? "", /nats-leaf down: connection refused/);
  t.is(modeOf(r, "registry"), "normal");
  // The event bus reports its own transitions (src/events/event-bus.ts): the matrix does not repeat them.
  t.is(events.length, 0);
});

test("status matrix - Redis down degrades rate limiting and recovers without a restart", (t) => {
  const { matrix, events, set, clock } = setup();
  matrix.evaluate();
  set("redis", "down", "redis connection reconnecting");
  clock.advance(1000);
  const degraded = matrix.evaluate();
  t.is(degraded.status, "degraded");
  t.is(modeOf(degraded, "rate-limit"), "degraded");
  t.is(degraded.capabilities.find((c) => c.name === "rate-limit")!.since, clock.now());
  t.is(events.length, 1);
  t.is(events[0]!.type, "degraded.mode.activated.v1");
  t.is(events[0]!.tenant, "system");
  t.like(events[0]!.payload, { capability: "rate-limit", dependency: "redis", mode: "per-process in-memory limits" });
  t.is(events[0]!.schema.typeName, DegradedModeActivatedSchema.typeName);

  t.is(matrix.evaluate().status, "degraded", "staying degraded emits nothing more");
  t.is(events.length, 1);

  set("redis", "ok");
  clock.advance(5000);
  const recovered = matrix.evaluate();
  t.is(recovered.status, "ready");
  t.is(modeOf(recovered, "rate-limit"), "normal");
  t.is(events.length, 2);
  t.is(events[1]!.type, "degraded.mode.recovered.v1");
  t.is(events[1]!.schema.typeName, DegradedModeRecoveredSchema.typeName);
  t.like(events[1]!.payload, { capability: "rate-limit", dependency: "redis", mode: "per-process in-memory limits" });
  t.is(recovered.dependencies.find((d) => d.name === "redis")!.since, clock.now());
});

test("status matrix - DGE unreachable blocks the egress guard (fail closed) without taking the kernel out of service", (t) => {
  const { matrix, events, set } = setup();
  set("dge", "down", "DGE http://127.0.0.1:7600 unreachable");
  const r = matrix.evaluate();
  t.true(r.ready, "registry and heartbeats keep serving; egress fails closed call by call");
  t.is(r.status, "degraded");
  t.is(modeOf(r, "egress-guard"), "blocked");
  t.like(events[0]!.payload, { capability: "egress-guard", dependency: "dge", mode: "blocked" });
  // Serving from cache (a probe saying degraded) is a degraded mode, not a block.
  set("dge", "degraded", "serving cached verdicts");
  const cached = matrix.evaluate();
  t.true(cached.ready);
  t.is(modeOf(cached, "egress-guard"), "degraded");
  t.is(events.at(-1)!.type, "degraded.mode.activated.v1");
  t.like(events.at(-1)!.payload, { mode: "cached verdicts only; uncached calls are blocked (fail closed)" });
  set("dge", "ok");
  t.is(matrix.evaluate().status, "ready");
  t.like(events.at(-1)!.payload, {
    capability: "egress-guard",
    mode: "cached verdicts only; uncached calls are blocked (fail closed)",
  });
  t.deepEqual(
    events.map((e) => e.type),
    ["degraded.mode.activated.v1", "degraded.mode.activated.v1", "degraded.mode.recovered.v1"],
  );
});

test("status matrix - SPIRE agent unreachable: identity degraded while the SVID is valid, blocked once it is not", (t) => {
  const { matrix, set } = setup();
  set("workload-api", "degraded", "Workload API unreachable; SVID valid until 2026-01-01T00:00:00Z");
  t.is(modeOf(matrix.evaluate(), "identity"), "degraded");
  set("workload-api", "down", "SVID expired");
  const r = matrix.evaluate();
  t.is(modeOf(r, "identity"), "blocked");
  t.false(r.ready);
});

test("status matrix - SQLite down blocks registry and audit; events wait until they can be written", (t) => {
  const { matrix, events, set, failAppends } = setup();
  matrix.evaluate();
  failAppends(true);
  set("sqlite", "down", "SQLITE_READONLY");
  const r = matrix.evaluate();
  t.false(r.ready);
  t.is(modeOf(r, "registry"), "blocked");
  t.is(modeOf(r, "audit"), "blocked");
  t.is(events.length, 0, "nothing could be written");
  failAppends(false);
  set("sqlite", "ok");
  t.true(matrix.evaluate().ready);
  t.deepEqual(
    events.map((e) => `${e.type} ${(e.payload as unknown as { capability: string }).capability}`),
    [
      "degraded.mode.activated.v1 registry",
      "degraded.mode.activated.v1 audit",
      "degraded.mode.recovered.v1 registry",
      "degraded.mode.recovered.v1 audit",
    ],
  );
});

test("status matrix - a throwing probe counts as down, unprobed dependencies are ignored", (t) => {
  const options = resolveStatusMatrixOptions({});
  const events: KernelEvent[] = [];
  const matrix = createStatusMatrix(
    {
      probes: {
        sqlite: () => ({ name: "sqlite", state: "ok" }),
        dge: () => {
          throw new Error("boom");
        },
      },
      events: { append: (e) => (events.push(e), { id: 1, eventId: "x", subject: "s" }) },
      clock: createManualClock(0),
      logger: createSilentLogger(),
      meter: createNoopMeter(),
    },
    options,
  );
  const r = matrix.evaluate();
  t.deepEqual(
    r.dependencies.find((d) => d.name === "dge"),
    { name: "dge", state: "down", detail: "probe failed: boom", since: 0 },
  );
  t.is(modeOf(r, "egress-guard"), "blocked");
  t.is(modeOf(r, "federation"), "normal", "no hub-link probe: federation is not configured here");
});

test("status matrix - the matrix is configurable and validated", (t) => {
  const o = resolveStatusMatrixOptions({
    capabilities: {
      routing: { criticality: "CRITICAL" },
      billing: { criticality: "BEST_EFFORT", dependsOn: ["billing"], fallback: "usage buffered" },
    },
  });
  t.is(o.capabilities.routing?.criticality, "CRITICAL");
  t.deepEqual(o.capabilities.routing?.dependsOn, ["health-scores"], "unset fields keep the default");
  t.is(o.capabilities.billing?.fallback, "usage buffered");
  const err = (input: unknown) =>
    t.throws(() => resolveStatusMatrixOptions(input), { instanceOf: ConfigError })?.message;
  t.is(
    err({ capabilities: { routing: { criticality: "VITAL" } } }),
    'admin.status.capabilities.routing.criticality must be one of CRITICAL, ESSENTIAL, BEST_EFFORT (got "VITAL")',
  );
  t.is(
    err({ capabilities: { billing: { dependsOn: ["x"] } } }),
    "admin.status.capabilities.billing.criticality is required for a new capability",
  );
  t.regex(
    err({ capabilities: { routing: { dependsOn: ["Bad Name"] } } }) ?? "",
    /^admin\.status\.capabilities\.routing\.dependsOn\[0\] must match/,
  );
  t.regex(err({ intervalMs: 5 }) ?? "", /^admin\.status\.intervalMs must be an integer from 100/);
  t.regex(err({ colour: 1 }) ?? "", /admin\.status\.colour is not a known option/);
});

test("status matrix - redisProbe follows the ioredis connection status", (t) => {
  const redis = { status: "ready" };
  const probe = redisProbe(redis);
  t.is(probe().state, "ok");
  redis.status = "reconnecting";
  t.deepEqual(probe(), { name: "redis", state: "down", detail: "redis connection reconnecting" });
});

test("status matrix - events go through the outbox and gauges show modes on /metrics", async (t) => {
  const db = openDatabase({ path: ":memory:" });
  migrateUp(db, MIGRATIONS);
  const clock = createManualClock(1_700_000_000_000);
  const telemetry = createTelemetry(DEFAULT_TELEMETRY_OPTIONS, { logger: createSilentLogger() });
  t.teardown(async () => {
    db.close();
    await telemetry.shutdown();
  });
  let hub: State = "ok";
  const matrix = createStatusMatrix(
    {
      probes: { "hub-link": () => ({ name: "hub-link", state: hub }) },
      events: createOutbox(createSqliteOutboxStore(db), { source: "edge-1", clock }),
      clock,
      logger: createSilentLogger(),
      meter: telemetry.meter("admin"),
    },
    resolveStatusMatrixOptions({}),
  );
  matrix.evaluate();
  hub = "down";
  matrix.evaluate();
  const row = db.prepare("SELECT subject, envelope FROM outbox").get() as { subject: string; envelope: Buffer };
  t.is(row.subject, "nops.events.system.degraded.mode.activated.v1");
  const envelope = fromBinary(EventEnvelopeSchema, row.envelope);
  t.like(fromBinary(DegradedModeActivatedSchema, envelope.payload), {
    capability: "federation",
    dependency: "hub-link",
    mode: "local-only (store-and-forward)",
  });
  const families = parsePrometheusText(await telemetry.metricsText());
  t.is(sample(families, "nops_capability_mode", { capability: "federation", criticality: "ESSENTIAL" }), 1);
  t.is(sample(families, "nops_capability_mode", { capability: "registry", criticality: "CRITICAL" }), 0);
  t.is(sample(families, "nops_dependency_state", { dependency: "hub-link" }), 2);
});

test("admin service - GetStatus reports dependencies and capability modes over Connect", async (t) => {
  const { matrix, set } = setup();
  set("hub-link", "down", "hub unreachable");
  const server = createHttpServer({
    services: [bindService(AdminService, createAdminService({ matrix, version: "1.2.3" }), [])],
    routes: {},
    limits: DEFAULT_KERNEL_OPTIONS.limits,
  });
  const port = await server.listen("127.0.0.1", 0);
  t.teardown(() => server.shutdown(0));
  const res = await createClient(
    AdminService,
    createConnectTransport({ baseUrl: `http://127.0.0.1:${port}`, httpVersion: "1.1" }),
  ).getStatus({});
  t.is(res.readiness, Readiness.DEGRADED);
  t.is(res.version, "1.2.3");
  t.deepEqual(
    res.dependencies.map((d) => d.name),
    [...DEPENDENCIES],
  );
  const hub = res.dependencies.find((d) => d.name === "hub-link")!;
  t.is(hub.state, DependencyState.DOWN);
  t.is(hub.detail, "hub unreachable");
  t.is(Number(hub.since?.seconds), 1_700_000_000);
  const federation = res.capabilities.find((c) => c.name === "federation")!;
  t.is(federation.criticality, Criticality.ESSENTIAL);
  t.is(federation.mode, CapabilityMode.DEGRADED);
  t.is(federation.fallback, "local-only (store-and-forward)");
  t.deepEqual(federation.dependsOn, ["hub-link", "federation-links"]);
  t.is(res.capabilities.find((c) => c.name === "scorecard")?.criticality, Criticality.BEST_EFFORT);
  t.is(res.capabilities.find((c) => c.name === "registry")?.mode, CapabilityMode.NORMAL);
});
