import "reflect-metadata";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { connect as tlsConnect } from "node:tls";
import test, { type ExecutionContext } from "ava";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { InMemorySpanExporter, NodeTracerProvider, SimpleSpanProcessor } from "@opentelemetry/sdk-trace-node";
import { MeterProvider, MetricReader, type ResourceMetrics } from "@opentelemetry/sdk-metrics";
import { AgentRegistryService, AgentStatus } from "../../gen/nops/kernel/v1/agent_registry_pb.js";
import { RoutingService } from "../../gen/nops/kernel/v1/routing_pb.js";
import {
  Code,
  ConfigurationError,
  HandlerError,
  RegistrationError,
  createAgent,
  type Agent,
  type AgentOptions,
} from "../../packages/agent-sdk/src/index.js";
import { startTestKernel, TEST_API_KEY_PEPPER } from "../helpers/kernel.js";
import { startWorkloadApiDouble } from "../helpers/workload-api-double.js";
import { createTestCa } from "../helpers/test-ca.js";
import { waitFor } from "../helpers/processes.js";

const TENANT = "acme";

async function devKernel(t: ExecutionContext, registry: Record<string, number> = {}) {
  // Tests here drive calls as fast as they go: lift the per-IP (100/min) and tier-1 (100/s) limits.
  const rateLimit = { ipOverrides: { "127.0.0.1": 1_000_000 }, tenantTiers: { [TENANT]: 3 } };
  const k = await startTestKernel(t, { identity: { source: "dev" }, registry, rateLimit });
  const dir = join(k.dir, "dev-identity");
  const transport = createGrpcTransport({
    baseUrl: `https://localhost:${k.kernel.grpcPort}`,
    nodeOptions: {
      ca: readFileSync(join(dir, "bundle.pem")),
      cert: readFileSync(join(dir, "svid.pem")),
      key: readFileSync(join(dir, "svid.key")),
    },
  });
  return {
    k,
    dir,
    url: `https://localhost:${k.kernel.grpcPort}`,
    registry: createClient(AgentRegistryService, transport),
    routing: createClient(RoutingService, transport),
  };
}

function startAgent(t: ExecutionContext, options: AgentOptions): Agent {
  const agent = createAgent({ ...options, drain: { handleSignals: false, settleMs: 0, ...options.drain } });
  t.teardown(() => agent.drain("teardown"));
  return agent;
}

const echo = { echo: { handle: async (p: Uint8Array) => p } };

function peerSerial(endpoint: string, ca: string): Promise<string> {
  const [host, port] = endpoint.split(":");
  return new Promise((resolve, reject) => {
    const socket = tlsConnect(
      { host, port: Number(port), ca, rejectUnauthorized: false, ALPNProtocols: ["h2"] },
      () => {
        resolve(socket.getPeerCertificate().serialNumber);
        socket.end();
      },
    );
    socket.once("error", reject);
  });
}

test("agent sdk - registers once, heartbeats at the kernel's interval, answers invokes", async (t) => {
  const kd = await devKernel(t, { heartbeatTtlMs: 600 });
  const agent = startAgent(t, {
    tenant: TENANT,
    name: "sdk-unit",
    kernelUrl: kd.url,
    identity: { type: "dev", dir: kd.dir },
    capabilities: echo,
  });
  const beats: number[] = [];
  agent.on("heartbeat", (h) => beats.push(h.nextHeartbeatMs));
  await agent.start();
  t.is(agent.state, "running");
  await waitFor(() => beats.length >= 3, "three heartbeats", 10_000);
  t.true(
    beats.every((ms) => ms === 200),
    `the kernel's interval (ttl/3) is used: ${beats.join(",")}`,
  );
  const listed = await kd.registry.listAgents({ tenant: TENANT });
  t.is(listed.agents.length, 1);
  t.is(listed.agents[0]?.status, AgentStatus.HEALTHY);
  const res = await kd.routing.invoke({ tenant: TENANT, capability: "echo", payload: new Uint8Array([7]) });
  t.deepEqual([...res.payload], [7]);
  await agent.drain();
  t.is(agent.state, "stopped");
  t.is((await kd.registry.listAgents({ tenant: TENANT })).agents.length, 0);
});

test("agent sdk - a dev SVID is re-minted at half-life and served on new handshakes without failed calls", async (t) => {
  const kd = await devKernel(t);
  const agent = startAgent(t, {
    tenant: TENANT,
    name: "rotating",
    kernelUrl: kd.url,
    // Re-minted after 4 s: short enough for a test, long enough that a loaded machine (timers late by
    // seconds) never lets the current SVID expire before its successor is served.
    identity: { type: "dev", dir: kd.dir, svidTtlMs: 8000 },
    capabilities: echo,
  });
  await agent.start();
  const ca = readFileSync(join(kd.dir, "bundle.pem"), "utf8");
  const first = await peerSerial(agent.endpoint!, ca);
  let calls = 0;
  let failures = 0;
  // The kernel's channel to the agent stays open across the rotation.
  const until = Date.now() + 60_000;
  let rotated = false;
  while (!rotated && Date.now() < until) {
    try {
      await kd.routing.invoke({ tenant: TENANT, capability: "echo", payload: new Uint8Array([1]) });
      calls++;
    } catch {
      failures++;
    }
    rotated = (await peerSerial(agent.endpoint!, ca)) !== first;
  }
  t.true(rotated, "a new SVID is presented to new handshakes");
  await kd.routing.invoke({ tenant: TENANT, capability: "echo", payload: new Uint8Array([1]) });
  t.true(calls > 0);
  t.is(failures, 0);
});

test("agent sdk - workload API identity: SVID and rotation stream from the Workload API", async (t) => {
  const TD = "nops.test";
  const ca = await createTestCa(TD);
  const wl = await startWorkloadApiDouble();
  t.teardown(() => wl.close());
  const kernelId = `spiffe://${TD}/nops/kernel/edge-test`;
  wl.issue({
    spiffeId: kernelId,
    svid: await ca.issue({ spiffeId: kernelId, dnsNames: ["localhost"], ipAddresses: ["127.0.0.1"] }),
    bundle: ca.certDer,
  });
  const k = await startTestKernel(t, {
    edgeId: "edge-test",
    trustDomain: TD,
    identity: { source: "workload-api", socket: wl.address, apiKeyPepper: TEST_API_KEY_PEPPER },
  });
  const kernelAddress = `https://localhost:${k.kernel.grpcPort}`;
  // The agent has its own Workload API (one per workload, as a SPIRE agent serves each its own).
  const agentWl = await startWorkloadApiDouble();
  t.teardown(() => agentWl.close());
  const agentId = `spiffe://${TD}/nops/tenant/${TENANT}/agent/wl-agent`;
  agentWl.issue({ spiffeId: agentId, svid: await ca.issue({ spiffeId: agentId }), bundle: ca.certDer });
  const agent = startAgent(t, {
    tenant: TENANT,
    name: "wl-agent",
    kernelUrl: kernelAddress,
    identity: { type: "workload-api", socket: agentWl.address },
    capabilities: echo,
  });
  await agent.start();
  const first = await peerSerial(agent.endpoint!, ca.certPem);
  agentWl.issue({ spiffeId: agentId, svid: await ca.issue({ spiffeId: agentId }), bundle: ca.certDer });
  await waitFor(async () => (await peerSerial(agent.endpoint!, ca.certPem)) !== first, "rotated SVID", 10_000);
  const adminSvid = await ca.issue({ spiffeId: `spiffe://${TD}/nops/admin/ops` });
  const admin = createGrpcTransport({
    baseUrl: kernelAddress,
    nodeOptions: { ca: ca.certPem, cert: adminSvid.certPem, key: adminSvid.keyPem },
  });
  const listed = await createClient(AgentRegistryService, admin).listAgents({ tenant: TENANT });
  t.deepEqual(
    listed.agents.map((a) => a.id),
    [agent.id!],
    "registered over mTLS with the Workload API SVID",
  );
  // The kernel reaches the agent over mTLS with the rotated SVID.
  const res = await createClient(RoutingService, admin).invoke({
    tenant: TENANT,
    capability: "echo",
    payload: new Uint8Array([9]),
  });
  t.deepEqual([...res.payload], [9]);
});

test("agent sdk - the handler's span continues the caller's trace; metrics count the call", async (t) => {
  const kd = await devKernel(t);
  const exporter = new InMemorySpanExporter();
  const tracerProvider = new NodeTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] });
  class Reader extends MetricReader {
    protected override async onForceFlush() {}
    protected override async onShutdown() {}
  }
  const reader = new Reader();
  const meterProvider = new MeterProvider({ readers: [reader] });
  const agent = startAgent(t, {
    tenant: TENANT,
    name: "traced",
    kernelUrl: kd.url,
    identity: { type: "dev", dir: kd.dir },
    capabilities: {
      echo: {
        handle: async (p, ctx) => {
          t.truthy(ctx.deadline, "deadline");
          t.false(ctx.signal.aborted);
          return p;
        },
      },
      fail: {
        handle: async () => {
          throw new HandlerError(Code.FailedPrecondition, "not today");
        },
      },
    },
    tracerProvider,
    meterProvider,
  });
  await agent.start();
  const traceId = "0af7651916cd43dd8448eb211c80319c";
  await kd.routing.invoke(
    { tenant: TENANT, capability: "echo", payload: new Uint8Array([1]) },
    { timeoutMs: 30_000, headers: { traceparent: `00-${traceId}-b7ad6b7169203331-01` } },
  );
  const err = await t.throwsAsync(kd.routing.invoke({ tenant: TENANT, capability: "fail" }, { timeoutMs: 30_000 }));
  t.regex(String(err?.message), /not today/);
  const spans = exporter.getFinishedSpans().filter((s) => s.name.startsWith("AgentService/Handle"));
  t.true(
    spans.some((s) => s.spanContext().traceId === traceId),
    spans.map((s) => s.spanContext().traceId).join(","),
  );
  const { resourceMetrics } = (await reader.collect()) as { resourceMetrics: ResourceMetrics };
  const names = resourceMetrics.scopeMetrics.flatMap((s) => s.metrics.map((m) => m.descriptor.name));
  for (const n of ["nops.agent.invocations", "nops.agent.invocation.duration", "nops.agent.heartbeats"])
    t.true(names.includes(n), `${n} in ${names.join(",")}`);
});

test("agent sdk - typed errors: bad options name the field, a reused key with other content is RegistrationError", async (t) => {
  t.throws(() => createAgent({ tenant: "Bad Tenant", name: "a", capabilities: echo }), {
    instanceOf: ConfigurationError,
    message: /tenant/,
  });
  t.throws(() => createAgent({ tenant: TENANT, name: "my agent", capabilities: echo, identity: { type: "dev" } }), {
    instanceOf: ConfigurationError,
    message: /name must be/,
  });
  t.throws(() => createAgent({ tenant: TENANT, name: "a", capabilities: { x: {} } }), {
    instanceOf: ConfigurationError,
    message: /capabilities\.x/,
  });
  t.throws(() => createAgent({ tenant: TENANT, name: "a", capabilities: echo, heartbeat: { timeoutMs: -1 } }), {
    instanceOf: ConfigurationError,
    message: /heartbeat\.timeoutMs/,
  });
  const kd = await devKernel(t);
  const base = {
    tenant: TENANT,
    name: "keyed",
    kernelUrl: kd.url,
    identity: { type: "dev" as const, dir: kd.dir },
    capabilities: echo,
    registration: { idempotencyKey: "fixed-key" },
  };
  await startAgent(t, base).start();
  const second = startAgent(t, { ...base, version: "2.0.0" });
  const err = await t.throwsAsync(second.start(), { instanceOf: RegistrationError });
  t.is(err?.code, Code.AlreadyExists);
  t.is(second.state, "stopped");
  t.is((await kd.registry.listAgents({ tenant: TENANT })).agents.length, 1);
});

test("agent sdk - publish and subscribe in the agent's tenant; a throwing handler gets the event again", async (t) => {
  const k = await startTestKernel(t, { identity: { source: "dev" }, nats: { leaf: "auto" } });
  const dir = join(k.dir, "dev-identity");
  const agent = startAgent(t, {
    tenant: TENANT,
    name: "events",
    kernelUrl: `https://localhost:${k.kernel.grpcPort}`,
    identity: { type: "dev", dir },
    capabilities: echo,
  });
  await agent.start();
  const seen: { payload: string; deliveryCount: number; type: string }[] = [];
  let failedOnce = false;
  agent.subscribe(
    "sdk_notes",
    (e) => {
      seen.push({ payload: new TextDecoder().decode(e.payload), deliveryCount: e.deliveryCount, type: e.payloadType });
      if (!failedOnce) {
        failedOnce = true;
        throw new Error("first delivery fails");
      }
    },
    { filter: "notes.>" },
  );
  const published = await agent.publish("notes.created.v1", "hello", { payloadType: "text/plain" });
  t.truthy(published.eventId);
  await waitFor(() => seen.length >= 2, "a delivery and its redelivery", 30_000, 100);
  t.like(seen[0], { payload: "hello", deliveryCount: 1, type: "text/plain" });
  t.like(seen[1], { payload: "hello", deliveryCount: 2 });
});

test("agent sdk - identity none runs against a plaintext kernel (NOPS_IDENTITY_SOURCE=none)", async (t) => {
  const k = await startTestKernel(t, { authn: { allowAnonymous: true }, authz: { allowAnonymous: true } });
  t.throws(() => createAgent({ tenant: TENANT, name: "plain", capabilities: echo, identity: { type: "none" } }), {
    instanceOf: ConfigurationError,
    message: /plaintext kernel/,
  });
  const agent = startAgent(t, {
    tenant: TENANT,
    name: "plain",
    kernelUrl: `http://127.0.0.1:${k.kernel.grpcPort}`,
    identity: { type: "none" },
    capabilities: echo,
  });
  await agent.start();
  const res = await agent.invoke("echo", "hi", { timeoutMs: 30_000 });
  t.is(new TextDecoder().decode(res.payload), "hi");
  t.is(res.agentName, "plain");
});
