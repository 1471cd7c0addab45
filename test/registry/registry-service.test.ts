import test, { type ExecutionContext } from "ava";
import { Code, ConnectError } from "@connectrpc/connect";
import {
  AgentRegistryService,
  AgentStatus,
  WatchAgentsResponse_ChangeType as ChangeType,
  type WatchAgentsResponse,
} from "../../gen/nops/kernel/v1/agent_registry_pb.js";
import { Health, HealthCheckResponse_ServingStatus as Serving } from "../../gen/grpc/health/v1/health_pb.js";
import { BOTH, startTestKernel, type TransportName } from "../helpers/kernel.js";

const agentInput = {
  tenant: "acme",
  name: "summarizer",
  version: "1.2.0",
  endpoint: "127.0.0.1:50061",
  capabilities: [{ name: "summarize", version: "1.0", attributes: { model: "small" } }],
  labels: { zone: "a" },
};

async function rejects(t: ExecutionContext, p: Promise<unknown>, code: Code, field?: string): Promise<ConnectError> {
  const err = await t.throwsAsync(p);
  t.true(err instanceof ConnectError, `expected ConnectError, got ${String(err)}`);
  const ce = err as ConnectError;
  t.is(ce.code, code, ce.message);
  if (field) t.true(ce.rawMessage.startsWith(`${field}:`), `message names ${field}: ${ce.rawMessage}`);
  return ce;
}

// Both servers, and the in-process lane, which must behave as they do (chain, limits, streams).
for (const transport of [...BOTH, "in-process"] as const) {
  test(`registry service - full lifecycle over ${transport}`, async (t) => {
    const k = await startTestKernel(t);
    const client = k.client(AgentRegistryService, transport);
    const { agent } = await client.registerAgent(agentInput);
    t.truthy(agent?.id);
    t.is(agent?.status, AgentStatus.HEALTHY);
    t.is(agent?.capabilities[0]?.attributes.model, "small");
    const id = agent!.id;

    t.is((await client.getAgent({ tenant: "acme", id })).agent?.name, "summarizer");

    const listed = await client.listAgents({ tenant: "acme", capability: "summarize" });
    t.deepEqual(
      listed.agents.map((a) => a.id),
      [id],
    );
    t.is((await client.listAgents({ tenant: "acme", capability: "translate" })).agents.length, 0);

    const updated = await client.updateAgent({
      agent: { id, tenant: "acme", version: "1.3.0", name: "ignored" },
      updateMask: { paths: ["version"] },
    });
    t.is(updated.agent?.version, "1.3.0");
    t.is(updated.agent?.name, "summarizer", "fields outside the mask are untouched");
    t.is(updated.agent?.revision, 2n);

    const beat = await client.heartbeat({
      tenant: "acme",
      id,
      load: { inFlight: 3, cpu: 0.5, latencyP50Ms: 12, latencyP99Ms: 40, errorRate: 0.01 },
    });
    t.is(beat.status, AgentStatus.HEALTHY);
    t.true(beat.nextHeartbeatMs > 0);
    t.is((await client.getAgent({ tenant: "acme", id })).agent?.load?.inFlight, 3);

    await client.deregisterAgent({ tenant: "acme", id, reason: "scaled down" });
    await rejects(t, client.getAgent({ tenant: "acme", id }), Code.NotFound);
  });

  test(`registry service - a message over the size limit is refused over ${transport}`, async (t) => {
    const k = await startTestKernel(t, { limits: { maxMessageBytes: 64 * 1024 } });
    const client = k.client(AgentRegistryService, transport);
    const err = await t.throwsAsync(client.registerAgent({ ...agentInput, labels: { big: "x".repeat(100 * 1024) } }));
    t.true(err instanceof ConnectError);
    t.is((err as ConnectError).code, Code.ResourceExhausted, (err as ConnectError).message);
  });

  test(`registry service - WatchAgents streams the current set then changes over ${transport}`, async (t) => {
    const k = await startTestKernel(t);
    const client = k.client(AgentRegistryService, transport);
    const existing = (await client.registerAgent(agentInput)).agent!;
    const abort = new AbortController();
    const iterator = client.watchAgents({ tenant: "acme" }, { signal: abort.signal })[Symbol.asyncIterator]();
    const stream = { next: async () => (await iterator.next()) as IteratorResult<WatchAgentsResponse, undefined> };
    const first = await stream.next();
    t.is(first.value?.type, ChangeType.EXISTING);
    t.is(first.value?.agent?.id, existing.id);
    await client.registerAgent({ ...agentInput, tenant: "globex" }); // other tenant: not seen
    const added = (await client.registerAgent({ ...agentInput, name: "second" })).agent!;
    const second = await stream.next();
    t.is(second.value?.type, ChangeType.REGISTERED);
    t.is(second.value?.agent?.id, added.id);
    await client.deregisterAgent({ tenant: "acme", id: existing.id });
    const third = await stream.next();
    t.is(third.value?.type, ChangeType.DEREGISTERED);
    t.is(third.value?.agent?.id, existing.id);
    abort.abort();
  });

  test(`health - grpc.health.v1 Check over ${transport}`, async (t) => {
    const k = await startTestKernel(t);
    const health = k.client(Health, transport);
    t.is((await health.check({ service: "" })).status, Serving.SERVING);
    t.is((await health.check({ service: "nops.kernel.v1.AgentRegistryService" })).status, Serving.SERVING);
    await rejects(t, health.check({ service: "no.such.Service" }), Code.NotFound);
  });

  test(`interceptors - correlation id is taken from x-request-id and echoed over ${transport}`, async (t) => {
    const k = await startTestKernel(t);
    const client = k.client(AgentRegistryService, transport);
    let echoed = null as string | null;
    await client.listAgents(
      { tenant: "acme" },
      { headers: { "x-request-id": "req-abc-123" }, onHeader: (h) => (echoed = h.get("x-request-id")) },
    );
    t.is(echoed, "req-abc-123");
    t.true(k.logs.some((l) => l.includes('"correlationId":"req-abc-123"') && l.includes("ListAgents")));
    let generated = null as string | null;
    await client.listAgents({ tenant: "acme" }, { onHeader: (h) => (generated = h.get("x-request-id")) });
    t.regex(generated ?? "", /^[0-9a-f-]{36}$/);
  });
}

// Service logic, not transport: the in-process lane (connect's router transport, the same bound
// services and chain, Connect protocol as connect-node serves it) plus grpc-js, whose adapter
// maps errors on its own.
const LOGIC: readonly TransportName[] = ["in-process", "grpc-js"];
for (const transport of LOGIC) {
  test(`registry service - another tenant cannot see an agent over ${transport}`, async (t) => {
    const k = await startTestKernel(t);
    const client = k.client(AgentRegistryService, transport);
    const { agent } = await client.registerAgent(agentInput);
    await rejects(t, client.getAgent({ tenant: "globex", id: agent!.id }), Code.NotFound);
    await rejects(t, client.heartbeat({ tenant: "globex", id: agent!.id }), Code.NotFound);
    await rejects(t, client.deregisterAgent({ tenant: "globex", id: agent!.id }), Code.NotFound);
    t.is((await client.listAgents({ tenant: "globex" })).agents.length, 0);
  });

  test(`registry service - bad input is INVALID_ARGUMENT naming the field over ${transport}`, async (t) => {
    const k = await startTestKernel(t);
    const client = k.client(AgentRegistryService, transport);
    await rejects(t, client.registerAgent({ ...agentInput, tenant: "" }), Code.InvalidArgument, "tenant");
    await rejects(
      t,
      client.registerAgent({ ...agentInput, endpoint: "not a url::" }),
      Code.InvalidArgument,
      "endpoint",
    );
    await rejects(
      t,
      client.registerAgent({ ...agentInput, endpoint: "ftp://host:21" }),
      Code.InvalidArgument,
      "endpoint",
    );
    await rejects(t, client.registerAgent({ ...agentInput, endpoint: "host:99999" }), Code.InvalidArgument, "endpoint");
    await rejects(t, client.registerAgent({ ...agentInput, name: "x".repeat(129) }), Code.InvalidArgument, "name");
    await rejects(
      t,
      client.registerAgent({ ...agentInput, capabilities: [{ name: "a" }, { name: "a" }] }),
      Code.InvalidArgument,
      "capabilities[1].name",
    );
    // Within the transport limit but over the agent record limit: the field is named.
    const bigLabels = Object.fromEntries(Array.from({ length: 60 }, (_, i) => [`k${i}`, "v".repeat(250)]));
    const bigCaps = Array.from({ length: 60 }, (_, i) => ({
      name: `cap${i}`,
      attributes: Object.fromEntries(Array.from({ length: 30 }, (_, j) => [`a${j}`, "x".repeat(1000)])),
    }));
    await rejects(
      t,
      client.registerAgent({ ...agentInput, labels: bigLabels, capabilities: bigCaps }),
      Code.InvalidArgument,
      "capabilities",
    );
    const { agent } = await client.registerAgent(agentInput);
    const ce = await rejects(
      t,
      client.updateAgent({ agent: { id: agent!.id, tenant: "acme" }, updateMask: { paths: ["version", "status"] } }),
      Code.InvalidArgument,
      "update_mask.paths[1]",
    );
    t.regex(ce.rawMessage, /status/);
    await rejects(
      t,
      client.updateAgent({ agent: { id: agent!.id, tenant: "acme" }, updateMask: { paths: ["nmae"] } }),
      Code.InvalidArgument,
      "update_mask.paths[0]",
    );
    await rejects(
      t,
      client.updateAgent({ agent: { id: agent!.id, tenant: "acme" } }),
      Code.InvalidArgument,
      "update_mask",
    );
    await rejects(
      t,
      client.heartbeat({ tenant: "acme", id: agent!.id, load: { cpu: 7 } }),
      Code.InvalidArgument,
      "load.cpu",
    );
    await rejects(t, client.listAgents({ tenant: "acme", pageToken: "garbage!" }), Code.InvalidArgument, "page_token");
    await rejects(t, client.getAgent({ tenant: "acme", id: "nope" }), Code.InvalidArgument, "id");
    const firstOfWatch = (syncIntervalMs: number) =>
      client.watchAgents({ tenant: "acme", syncIntervalMs })[Symbol.asyncIterator]().next();
    await rejects(t, firstOfWatch(99), Code.InvalidArgument, "sync_interval_ms");
    await rejects(t, firstOfWatch(60_001), Code.InvalidArgument, "sync_interval_ms");
  });
}

test(`registry service - pages through agents with a token bound to the query in process`, async (t) => {
  const k = await startTestKernel(t);
  const client = k.client(AgentRegistryService, "in-process");
  const ids = new Set<string>();
  for (let i = 0; i < 5; i++) ids.add((await client.registerAgent({ ...agentInput, name: `a${i}` })).agent!.id);
  const seen: string[] = [];
  let pageToken = "";
  do {
    const page = await client.listAgents({ tenant: "acme", pageSize: 2, pageToken });
    t.true(page.agents.length <= 2);
    seen.push(...page.agents.map((a) => a.id));
    pageToken = page.nextPageToken;
  } while (pageToken);
  t.deepEqual([...seen].sort(), [...ids].sort());
  t.is(seen.length, 5);
  const first = await client.listAgents({ tenant: "acme", pageSize: 2 });
  await rejects(
    t,
    client.listAgents({ tenant: "acme", pageSize: 2, pageToken: first.nextPageToken, capability: "summarize" }),
    Code.InvalidArgument,
    "page_token",
  );
});

const EXTRA: TransportName[] = ["connect-binary-h2", "grpc-web", "grpc-over-connect-node"];
for (const transport of EXTRA) {
  test(`registry service - register and get over ${transport} on the connect-node server`, async (t) => {
    const k = await startTestKernel(t);
    const client = k.client(AgentRegistryService, transport);
    const { agent } = await client.registerAgent(agentInput);
    t.is((await client.getAgent({ tenant: "acme", id: agent!.id })).agent?.endpoint, agentInput.endpoint);
  });
}

test("interceptors - deadlines longer than the cap are capped", async (t) => {
  const k = await startTestKernel(t, { limits: { maxDeadlineMs: 50 } });
  const client = k.client(AgentRegistryService, "grpc-js");
  // A watch is exempt (long-lived), a unary call runs well within 50 ms: both succeed.
  await client.listAgents({ tenant: "acme" }, { timeoutMs: 60_000 });
  t.pass();
});
