// One fault per runbook in docs/runbooks/, caused against a whole kernel: it keeps serving what
// the criticality matrix says, shows the symptoms the runbook lists (readiness, metrics, events,
// logs) and recovers without a restart. dependency-hung.md is exercised by
// test/faults/hung-dependencies.test.ts (a SIGSTOPped Redis, DGE and NATS leaf under load).
import "reflect-metadata";
import test from "ava";
import * as grpc from "@grpc/grpc-js";
import { Code, ConnectError } from "@connectrpc/connect";
import { AgentRegistryService } from "../../gen/nops/kernel/v1/agent_registry_pb.js";
import { RoutingService } from "../../gen/nops/kernel/v1/routing_pb.js";
import { EventBusService } from "../../gen/nops/kernel/v1/event_bus_pb.js";
import { AdminService, CapabilityMode } from "../../gen/nops/kernel/v1/admin_pb.js";
import { startTestKernel, type TestKernel, TEST_API_KEY_PEPPER } from "../helpers/kernel.js";
import { waitFor } from "../helpers/processes.js";
import { startRedisServer } from "../helpers/redis-server.js";
import { startNatsTopology } from "../helpers/nats-servers.js";
import { DGE_KEYS, spawnDge } from "../fixtures/dge-helpers.js";
import { spawnEchoAgent } from "../routing/fixtures/spawn-echo-agent.js";
import { createTestCa } from "../helpers/test-ca.js";
import { startWorkloadApiDouble } from "../helpers/workload-api-double.js";
import { Health } from "../../gen/grpc/health/v1/health_pb.js";
import { HealthCheckResponse_ServingStatus as Serving } from "../../gen/grpc/health/v1/health_pb.js";
import type { OverloadSamplers } from "../../src/server/overload-guard.js";
import { logged, metric, modeEvents, readyz as readyzOf } from "../faults/symptoms.js";

// Status is polled from loopback many times a second; the default per-IP limit would refuse it.
const POLLING = { rateLimit: { ipOverrides: { "127.0.0.1": 100_000 } } };

async function modeOf(k: TestKernel, capability: string): Promise<CapabilityMode | undefined> {
  const status = await k.client(AdminService, "connect-json").getStatus({});
  return status.capabilities.find((c) => c.name === capability)?.mode;
}

const readyz = readyzOf;

const agent = { tenant: "acme", name: "a", version: "1", endpoint: "grpc://agent.acme.svc:7000" };

test("runbook redis-down - limits fall back to memory, every response still carries limits, recovers", async (t) => {
  const redis = await startRedisServer();
  t.teardown(() => redis.kill());
  const k = await startTestKernel(t, { ...POLLING, redis: { url: `redis://127.0.0.1:${redis.port}` } });
  const registry = k.client(AgentRegistryService, "connect-json");
  await waitFor(async () => (await modeOf(k, "rate-limit")) === CapabilityMode.NORMAL, "redis ready", 10_000);

  await redis.kill();
  await waitFor(async () => (await modeOf(k, "rate-limit")) === CapabilityMode.DEGRADED, "rate-limit degraded", 10_000);
  const r = await readyz(k);
  t.is(r.code, 200, "an ESSENTIAL dependency never makes the kernel unready");
  t.is(r.body.status, "degraded");
  t.like(
    r.body.dependencies.find((d) => d.name === "redis"),
    { state: "down" },
  );
  t.regex(
    r.body.dependencies.find((d) => d.name === "redis")?.detail ?? "",
    /^redis connection (reconnecting|connecting|end|close)/,
  );
  t.like(
    r.body.capabilities.find((c) => c.name === "rate-limit"),
    { mode: "degraded" },
  );
  t.is(await metric(k, "nops_dependency_state", { dependency: "redis" }), 2);
  t.is(await metric(k, "nops_capability_mode", { capability: "rate-limit", criticality: "ESSENTIAL" }), 1);
  t.true(
    modeEvents(k).some((e) => e.type === "activated" && e.capability === "rate-limit" && e.dependency === "redis"),
    "degraded.mode.activated.v1 {rate-limit, redis}",
  );
  t.true(logged(k, "capability mode changed").some((l) => l.capability === "rate-limit" && l.to === "degraded"));
  let limit: string | null = null;
  await registry.registerAgent(agent, { onHeader: (h) => (limit = h.get("x-ratelimit-limit")) });
  t.truthy(limit, "limits are still enforced, in memory");

  const again = await startRedisServer(redis.port);
  t.teardown(() => again.kill());
  await waitFor(async () => (await modeOf(k, "rate-limit")) === CapabilityMode.NORMAL, "rate-limit recovered", 20_000);
  t.true(modeEvents(k).some((e) => e.type === "recovered" && e.capability === "rate-limit"));
});

test("runbook nats-down - Publish keeps succeeding into the outbox, drains when the leaf returns", async (t) => {
  const topo = await startNatsTopology({ edgeDomain: "edge-rb" });
  t.teardown(() => topo.destroy());
  const k = await startTestKernel(t, {
    ...POLLING,
    edgeId: "edge-rb",
    nats: { url: topo.leaf.url },
    events: { natsUser: topo.kernelUser.user, natsPassword: topo.kernelUser.pass, edgeDomain: topo.edgeDomain },
    egress: { tenantTiers: { acme: 1 } },
  });
  const bus = k.client(EventBusService, "grpc-js");
  await waitFor(async () => (await modeOf(k, "event-bus")) === CapabilityMode.NORMAL, "event bus connected", 20_000);

  await topo.leaf.kill9();
  await waitFor(async () => (await modeOf(k, "event-bus")) === CapabilityMode.DEGRADED, "event bus degraded", 20_000);
  const r = await readyz(k);
  t.is(r.code, 200);
  t.is(r.body.status, "degraded");
  t.like(
    r.body.dependencies.find((d) => d.name === "nats-leaf"),
    { state: "down" },
  );
  t.like(
    r.body.capabilities.find((c) => c.name === "event-bus"),
    { mode: "degraded" },
  );
  t.is(await metric(k, "nops_dependency_state", { dependency: "nats-leaf" }), 2);
  await waitFor(
    () => modeEvents(k).some((e) => e.type === "activated" && e.capability === "event-bus" && e.dependency === "nats"),
    "degraded.mode.activated.v1 {event-bus, nats}",
    5000,
  );
  t.true(logged(k, "event bus degraded").length > 0);
  const sub = await t.throwsAsync(async () => {
    for await (const m of bus.subscribe({ tenant: "acme", consumer: "rb", filter: "jobs.>" })) void m;
  });
  t.is(ConnectError.from(sub).code, Code.Unavailable, "Subscribe answers UNAVAILABLE");
  const acked: string[] = [];
  for (let i = 0; i < 5; i++)
    acked.push(
      (await bus.publish({ tenant: "acme", subject: "jobs.done", payload: new TextEncoder().encode(`{"job":${i}}`) }))
        .eventId,
    );
  t.is(acked.length, 5, "Publish is acknowledged while NATS is down");

  await topo.leaf.start();
  await waitFor(async () => (await modeOf(k, "event-bus")) === CapabilityMode.NORMAL, "event bus recovered", 30_000);
  await waitFor(
    async () => {
      const Database = (await import("better-sqlite3")).default;
      const db = new Database(k.kernel.options.databasePath, { readonly: true });
      const n = (
        db
          .prepare(
            "SELECT count(*) AS n FROM outbox o WHERE o.event_id IN (" +
              acked.map(() => "?").join(",") +
              ") AND o.published_at IS NOT NULL",
          )
          .get(...acked) as { n: number }
      ).n;
      db.close();
      return n === acked.length;
    },
    "outbox drained",
    30_000,
  );
  t.true(modeEvents(k).some((e) => e.type === "recovered" && e.capability === "event-bus"));
});

test("runbook dge-unreachable - egress fails closed with dge_timeout, the rest serves, recovers", async (t) => {
  const dge = await spawnDge(t);
  const port = Number(new URL(dge.url).port);
  const echo = await spawnEchoAgent({ name: "echo-rb" });
  t.teardown(() => echo.kill());
  const k = await startTestKernel(t, {
    ...POLLING,
    dge: { url: dge.url, keys: DGE_KEYS },
    egress: { tenantTiers: { acme: 1 }, dgeTimeoutMs: 1500 },
  });
  const registry = k.client(AgentRegistryService, "grpc-js");
  const routing = k.client(RoutingService, "grpc-js");
  await registry.registerAgent({ ...agent, endpoint: echo.endpoint, capabilities: [{ name: "echo" }] });
  // The DGE's first classification may outlast the 1.5 s budget on a loaded machine (its thread
  // compiles as it goes): the runbook starts from a guard that has answered once.
  await waitFor(
    () =>
      routing.invoke({ tenant: "acme", capability: "echo", payload: new TextEncoder().encode('{"op":"ping"}') }).then(
        () => true,
        () => false,
      ),
    "a first call through the guard",
    30_000,
  );
  await waitFor(async () => (await modeOf(k, "egress-guard")) === CapabilityMode.NORMAL, "egress guard normal", 15_000);

  await dge.kill9();
  await waitFor(
    async () => (await modeOf(k, "egress-guard")) === CapabilityMode.BLOCKED,
    "egress guard blocked",
    15_000,
  );
  const err = await t.throwsAsync(
    routing.invoke({ tenant: "acme", capability: "echo", payload: new TextEncoder().encode('{"op":"fresh-payload"}') }),
  );
  t.is(ConnectError.from(err).code, Code.PermissionDenied);
  t.regex(ConnectError.from(err).rawMessage, /dge_timeout|dge_error/);
  const r = await readyz(k);
  t.is(r.code, 200, "the registry keeps serving while egress fails closed");
  t.is(r.body.status, "degraded");
  t.like(
    r.body.dependencies.find((d) => d.name === "dge"),
    { state: "down" },
  );
  t.regex(r.body.dependencies.find((d) => d.name === "dge")?.detail ?? "", /unreachable|not answering/);
  t.like(
    r.body.capabilities.find((c) => c.name === "egress-guard"),
    { mode: "blocked" },
  );
  t.is(await metric(k, "nops_dependency_state", { dependency: "dge" }), 2);
  t.is(await metric(k, "nops_capability_mode", { capability: "egress-guard", criticality: "CRITICAL" }), 2);
  t.true((await metric(k, "egress_guard_requests_total", { result: "blocked" }, true))! >= 1);
  t.true((await metric(k, "dge_classification_errors_total", {}, true))! >= 1);
  t.true((await metric(k, "rpc_server_requests_total", { code: "PERMISSION_DENIED" }, true))! >= 1);
  t.true(modeEvents(k).some((e) => e.type === "activated" && e.capability === "egress-guard" && e.mode === "blocked"));
  t.true(logged(k, "no usable DGE answer: egress denied").length > 0);
  // Three unanswered calls open the breaker: from then on a denial costs no wait at all.
  await waitFor(
    async () => (await metric(k, "nops_dependency_circuit_state", { dependency: "dge" })) === 2,
    "dge circuit open",
    15_000,
  );
  const started = performance.now();
  await t.throwsAsync(
    routing.invoke({ tenant: "acme", capability: "echo", payload: new TextEncoder().encode('{"op":"fast-denial"}') }),
  );
  t.true(performance.now() - started < 500, "fails closed at once with the circuit open");
  t.truthy(await registry.listAgents({ tenant: "acme" }));

  const again = await spawnDge(t, { port });
  t.is(again.url, dge.url);
  await waitFor(
    async () => (await modeOf(k, "egress-guard")) === CapabilityMode.NORMAL,
    "egress guard recovered",
    20_000,
  );
  // The new DGE process answers its first classification cold, possibly past the 1.5 s budget on a
  // loaded machine: calls are allowed again, without a kernel restart, once it has answered.
  let answered = "";
  await waitFor(
    () =>
      routing.invoke({ tenant: "acme", capability: "echo", payload: new TextEncoder().encode('{"op":"after"}') }).then(
        (ok) => {
          answered = new TextDecoder().decode(ok.payload);
          return true;
        },
        () => false,
      ),
    "a call through the guard after the DGE returned",
    30_000,
  );
  t.is(answered, '{"op":"after"}');
  t.true(modeEvents(k).some((e) => e.type === "recovered" && e.capability === "egress-guard"));
});

test("runbook spire-agent-unreachable - serves on the current SVID, reports degraded identity, recovers", async (t) => {
  const ca = await createTestCa("nops.test");
  const wl = await startWorkloadApiDouble();
  t.teardown(() => wl.close());
  const issue = async () =>
    wl.issue({
      spiffeId: "spiffe://nops.test/nops/kernel/edge-local",
      svid: await ca.issue({ spiffeId: "spiffe://nops.test/nops/kernel/edge-local", dnsNames: ["localhost"] }),
      bundle: ca.certDer,
    });
  await issue();
  const k = await startTestKernel(t, {
    ...POLLING,
    trustDomain: "nops.test",
    identity: { source: "workload-api", socket: wl.address, apiKeyPepper: TEST_API_KEY_PEPPER },
  });
  const admin = await ca.issue({ spiffeId: "spiffe://nops.test/nops/admin/ops" });
  const channel = new grpc.Client(
    `localhost:${k.kernel.grpcPort}`,
    grpc.credentials.createSsl(Buffer.from(ca.certPem), Buffer.from(admin.keyPem), Buffer.from(admin.certPem)),
  );
  t.teardown(() => channel.close());
  const { createGrpcTransport } = await import("@connectrpc/connect-node");
  const { createClient } = await import("@connectrpc/connect");
  const transport = createGrpcTransport({
    baseUrl: `https://localhost:${k.kernel.grpcPort}`,
    nodeOptions: { ca: ca.certPem, cert: admin.certPem, key: admin.keyPem },
  });
  const status = () => createClient(AdminService, transport).getStatus({});
  const identityMode = async () => (await status()).capabilities.find((c) => c.name === "identity")?.mode;
  t.is(await identityMode(), CapabilityMode.NORMAL);

  wl.failWith(grpc.status.UNAVAILABLE);
  wl.endStreams(grpc.status.UNAVAILABLE);
  await waitFor(async () => (await identityMode()) === CapabilityMode.DEGRADED, "identity degraded", 15_000);
  // An operator's SVID: /readyz shows details only to callers allowed to read GetStatus.
  const tlsTrust = { ca: ca.certPem, cert: admin.certPem, key: admin.keyPem };
  const r = await readyz(k, tlsTrust);
  t.is(r.code, 200, "not ready only once the SVID expires");
  t.like(
    r.body.dependencies.find((d) => d.name === "workload-api"),
    { state: "degraded" },
  );
  t.regex(r.body.dependencies.find((d) => d.name === "workload-api")?.detail ?? "", /SVID valid until/);
  t.true(
    (await metric(k, "nops_spiffe_workload_api_stream_errors_total", { code: "UNAVAILABLE" }, true, tlsTrust))! >= 1,
  );
  t.is(await metric(k, "nops_dependency_state", { dependency: "workload-api" }, false, tlsTrust), 1);
  t.true(logged(k, "Workload API stream ended; retrying").length > 0);
  t.true(modeEvents(k).some((e) => e.type === "activated" && e.capability === "identity"));
  t.truthy(
    await createClient(AgentRegistryService, transport).registerAgent(agent),
    "mTLS calls keep working on the current SVID",
  );

  wl.failWith(null);
  await waitFor(async () => (await identityMode()) === CapabilityMode.NORMAL, "identity recovered", 30_000);
});

test("runbook overload - new calls shed with UNAVAILABLE and a retry hint, health and status answer, recovers", async (t) => {
  const readings = { loop: 5, heap: 0.2, fds: 0.05 };
  const samplers: OverloadSamplers = {
    eventLoopDelayMs: () => readings.loop,
    heapUsedRatio: () => readings.heap,
    openFdsRatio: () => readings.fds,
  };
  const k = await startTestKernel(
    t,
    { ...POLLING, admin: { overload: { sampleIntervalMs: 20 } } },
    { overloadSamplers: samplers },
  );
  const registry = k.client(AgentRegistryService, "grpc-js");
  await registry.registerAgent(agent);

  readings.loop = 400;
  await waitFor(async () => (await metric(k, "nops_overload_state")) === 1, "shedding", 5000);
  for (const transport of ["grpc-js", "connect-json"] as const) {
    const err = await t.throwsAsync(k.client(AgentRegistryService, transport).listAgents({ tenant: "acme" }));
    const ce = ConnectError.from(err);
    t.is(ce.code, Code.Unavailable, `${transport} sheds`);
    t.is(ce.rawMessage, "server overloaded; retry later");
    t.is(ce.metadata.get("retry-after"), "1", `${transport}: retry hint in seconds`);
    t.log(`${transport}: grpc-retry-pushback-ms ${ce.metadata.get("grpc-retry-pushback-ms")}`);
  }
  const connectErr = await t.throwsAsync(k.client(AgentRegistryService, "connect-json").listAgents({ tenant: "acme" }));
  t.is(ConnectError.from(connectErr).metadata.get("grpc-retry-pushback-ms"), "1000", "gRPC A6 pushback over Connect");

  // Health stays answerable: gRPC health, GetStatus, /healthz, /readyz.
  t.is((await k.client(Health, "grpc-js").check({ service: "" })).status, Serving.SERVING);
  const healthz = await fetch(`http://127.0.0.1:${k.kernel.httpPort}/healthz`);
  t.is(healthz.status, 200);
  const r = await readyz(k);
  t.is(r.code, 200, "overload does not take the kernel out of service");
  t.is(r.body.status, "degraded");
  t.like(
    r.body.dependencies.find((d) => d.name === "overload"),
    { state: "degraded" },
  );
  t.regex(
    r.body.dependencies.find((d) => d.name === "overload")?.detail ?? "",
    /shedding new calls: event-loop delay p99 400 ms >= 250 ms/,
  );
  t.is(await modeOf(k, "admission"), CapabilityMode.DEGRADED);
  t.is(await metric(k, "nops_capability_mode", { capability: "admission", criticality: "ESSENTIAL" }), 1);
  t.true((await metric(k, "nops_overload_pressure", { monitor: "event-loop-delay" }))! >= 1);
  t.true((await metric(k, "nops_overload_shed_total", { monitor: "event-loop-delay" }))! >= 2);
  t.true(
    modeEvents(k).some((e) => e.type === "activated" && e.capability === "admission" && e.dependency === "overload"),
  );
  t.true(logged(k, "overloaded: shedding new calls").length > 0);

  readings.loop = 5;
  await waitFor(async () => (await metric(k, "nops_overload_state")) === 0, "no longer shedding", 5000);
  t.truthy(await registry.listAgents({ tenant: "acme" }));
  t.true(logged(k, "no longer overloaded: accepting new calls").length > 0);
  await waitFor(async () => (await modeOf(k, "admission")) === CapabilityMode.NORMAL, "admission normal", 5000);
  t.true(modeEvents(k).some((e) => e.type === "recovered" && e.capability === "admission"));
});
