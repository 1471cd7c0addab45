import test from "ava";
import { Writable } from "node:stream";
import { createNoopMeter } from "@opentelemetry/api";
import { Code, ConnectError } from "@connectrpc/connect";
import { systemClock, type Clock } from "../../src/common/clock.js";
import { createLogger, createSilentLogger, type Logger } from "../../src/telemetry/logger.js";
import { createRouter, type InvokeParams, type Router } from "../../src/routing/router.js";
import { resolveRoutingOptions, type RoutingOptionsInput } from "../../src/routing/routing-options.js";
import { RouteMode } from "../../gen/nops/kernel/v1/routing_pb.js";
import { spawnEchoAgent, type EchoAgentProcess } from "./fixtures/spawn-echo-agent.js";
import { startEchoAgent } from "./fixtures/echo-agent.js";
import { createFakeRoutableAgents, echoAgentRecord, type FakeRoutableAgents } from "./fixtures/fake-routable-agents.js";

const enc = new TextEncoder();

function makeRouter(
  registry: FakeRoutableAgents,
  input: RoutingOptionsInput,
  logger: Logger = createSilentLogger(),
  clock: Clock = systemClock,
): Router {
  return createRouter(
    {
      agents: registry,
      egress: () => undefined, // no guard in this unit test: it exercises routing
      clock,
      logger,
      meter: createNoopMeter(),
    },
    resolveRoutingOptions(input),
  );
}

function params(extra: Partial<InvokeParams> = {}): InvokeParams {
  return {
    tenant: "t1",
    capability: "echo",
    payload: enc.encode("hi"),
    contentType: "text/plain",
    constraints: {},
    idempotent: true,
    timeoutMs: 5_000,
    signal: new AbortController().signal,
    ...extra,
  };
}

async function spawnAll(
  t: { teardown(fn: () => Promise<void>): void },
  specs: Array<Parameters<typeof spawnEchoAgent>[0]>,
): Promise<EchoAgentProcess[]> {
  const agents = await Promise.all(specs.map((s) => spawnEchoAgent(s)));
  for (const a of agents) t.teardown(() => a.kill());
  return agents;
}

async function until(what: string, fn: () => boolean | Promise<boolean>, timeoutMs = 15_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!(await fn())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

// Tests that judge latency or real-time bounds run serially (ava runs them before the others), so
// the other tests' load in this process cannot decide their outcome.
test.serial("router - traffic spreads by the static route's weights", async (t) => {
  const [a1, a2] = await spawnAll(t, [{ name: "a1" }, { name: "a2" }]);
  const registry = createFakeRoutableAgents([
    echoAgentRecord("a1", a1!.endpoint),
    echoAgentRecord("a2", `grpc://${a2!.endpoint}`),
  ]);
  // A wide latency floor and tie band: loopback jitter on a shared machine must not decide.
  const router = makeRouter(registry, {
    routes: [
      {
        capability: "echo",
        targets: [
          { agent: "a1", weight: 3 },
          { agent: "a2", weight: 1 },
        ],
      },
    ],
    scoring: { latencyFloorMs: 50, tieTolerance: 0.3, exploreRatio: 0, decayMs: 300 },
  });
  t.teardown(() => router.close());
  const counts = new Map<string, number>();
  for (let i = 0; i < 400; i++) {
    const res = await router.invoke(params());
    counts.set(res.agent.name, (counts.get(res.agent.name) ?? 0) + 1);
  }
  const share = (counts.get("a1") ?? 0) / 400;
  t.true(share > 0.62 && share < 0.88, `a1 share ${share}`);
});

test.serial("router - a slow agent gets less traffic", async (t) => {
  const [fast, slow] = await spawnAll(t, [{ name: "fast" }, { name: "slow", latencyMs: 60 }]);
  const registry = createFakeRoutableAgents([
    echoAgentRecord("fast", fast!.endpoint),
    echoAgentRecord("slow", slow!.endpoint),
  ]);
  const router = makeRouter(registry, {});
  t.teardown(() => router.close());
  const counts = new Map<string, number>();
  for (let i = 0; i < 60; i++) {
    const res = await router.invoke(params());
    counts.set(res.agent.name, (counts.get(res.agent.name) ?? 0) + 1);
  }
  t.true((counts.get("slow") ?? 0) < 12, `slow got ${counts.get("slow")} of 60`);
});

test.serial("router - killing an agent under load loses no request and traffic leaves it within 1 s", async (t) => {
  const agents = await spawnAll(t, [{ name: "k1" }, { name: "k2" }, { name: "k3" }]);
  const registry = createFakeRoutableAgents(agents.map((a, i) => echoAgentRecord(`k${i + 1}`, a.endpoint)));
  const router = makeRouter(registry, {});
  t.teardown(() => router.close());
  const results: Array<{ started: number; agent?: string; error?: string }> = [];
  let stop = false;
  let killedAt = Number.POSITIVE_INFINITY;
  const worker = async (): Promise<void> => {
    while (!stop) {
      const started = Date.now();
      try {
        const res = await router.invoke(params({ timeoutMs: 3_000 }));
        results.push({ started, agent: res.agent.name });
      } catch (e) {
        results.push({ started, error: String(e) });
      }
    }
  };
  const workers = Array.from({ length: 8 }, () => worker());
  await until("traffic on every agent", () => new Set(results.map((r) => r.agent)).size === 3);
  await agents[0]!.kill();
  killedAt = Date.now();
  await until(
    "2 s of traffic after the kill",
    () => Date.now() - killedAt > 2_000 && results.filter((r) => r.started > killedAt + 1_000).length >= 50,
    20_000,
  );
  stop = true;
  await Promise.all(workers);
  t.deepEqual(
    results.filter((r) => r.error),
    [],
    "no request lost",
  );
  const late = results.filter((r) => r.started > killedAt + 1_000);
  t.true(late.length >= 50);
  t.true(
    late.every((r) => r.agent !== "k1"),
    "requests started 1 s after the kill are served by survivors",
  );
  t.is(router.circuitState("id-k1"), "open");
});

test("router - an agent's circuit opens, half-opens and closes when it returns", async (t) => {
  const [c1, c2] = await spawnAll(t, [{ name: "c1" }, { name: "c2" }]);
  const registry = createFakeRoutableAgents([echoAgentRecord("c1", c1!.endpoint), echoAgentRecord("c2", c2!.endpoint)]);
  const states: string[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, done) {
      for (const line of chunk.toString().split("\n").filter(Boolean)) {
        const rec = JSON.parse(line) as { msg?: string; agentId?: string; state?: string };
        if (rec.msg === "agent circuit changed state" && rec.agentId === "id-c1" && rec.state) states.push(rec.state);
      }
      done();
    },
  });
  // Real timers (the agents' gRPC deadlines are real), but the breakers' time moves only when
  // the test skews it: an open circuit cannot half-open by itself while the test runs.
  let skew = 0;
  const clock: Clock = { ...systemClock, now: () => Date.now() + skew };
  const router = makeRouter(
    registry,
    { circuitBreaker: { consecutiveFailures: 3, halfOpenAfterMs: 600_000 }, scoring: { exploreRatio: 0.2 } },
    createLogger({ level: "info", redactPaths: [] }, sink),
    clock,
  );
  t.teardown(() => router.close());
  await c1!.kill();
  for (let i = 0; i < 200 && router.circuitState("id-c1") !== "open"; i++) await router.invoke(params());
  t.is(router.circuitState("id-c1"), "open");
  const back = await spawnEchoAgent({ name: "c1", port: c1!.port });
  t.teardown(() => back.kill());
  for (let i = 0; i < 30; i++)
    t.is((await router.invoke(params())).agent.name, "c2", "an open circuit is never chosen");
  t.is(router.circuitState("id-c1"), "open");
  let servedByC1 = false;
  // The channel to c1 reconnects on grpc-js's own (real-time) backoff, so this waits for it; each
  // round moves the breakers' time past halfOpenAfter, as a failed probe reopens the circuit.
  await until("c1 to serve again with its circuit closed", async () => {
    skew += 600_000;
    for (let i = 0; i < 20 && !servedByC1; i++) {
      const res = await router.invoke(params());
      servedByC1 = res.agent.name === "c1" && router.circuitState("id-c1") === "closed";
    }
    return servedByC1;
  });
  const open = states.indexOf("open");
  const half = states.indexOf("half-open", open);
  const closed = states.indexOf("closed", half);
  t.true(open >= 0 && half > open && closed > half, `transitions: ${states.join(" -> ")}`);
});

test("router - retries stay within the budget under a 100%-failure agent", async (t) => {
  const agent = await startEchoAgent({ name: "broken", failureRate: 1 });
  t.teardown(() => agent.close());
  const registry = createFakeRoutableAgents([echoAgentRecord("broken", `127.0.0.1:${agent.port}`)]);
  const router = makeRouter(registry, {
    retry: { maxAttempts: 5, baseDelayMs: 0, maxDelayMs: 0, budgetRatio: 0.2, budgetMinPerSecond: 0 },
    circuitBreaker: { consecutiveFailures: 100_000 },
  });
  t.teardown(() => router.close());
  const requests = 200;
  for (let i = 0; i < requests; i++) {
    const err = await t.throwsAsync(router.invoke(params()));
    t.is(ConnectError.from(err).code, Code.Unavailable);
  }
  t.true(agent.stats.calls > requests, "some retries happened");
  t.true(agent.stats.calls <= requests * 1.2, `${agent.stats.calls} calls for ${requests} requests`);
});

test.serial("router - retries never outlive a 200 ms caller deadline", async (t) => {
  const agent = await startEchoAgent({ name: "flaky-slow", failureRate: 1, latencyMs: 40 });
  t.teardown(() => agent.close());
  const registry = createFakeRoutableAgents([echoAgentRecord("flaky-slow", `127.0.0.1:${agent.port}`)]);
  // The router sets the call's deadline at its first reading of the clock in invoke(); recording
  // that reading makes the bound exact (the test's own Date.now() before the call is earlier by
  // however long the event loop took to get there).
  let firstRead: number | undefined;
  const clock: Clock = {
    ...systemClock,
    now: () => {
      const now = Date.now();
      firstRead ??= now;
      return now;
    },
  };
  const router = makeRouter(
    registry,
    { retry: { maxAttempts: 50, baseDelayMs: 5, maxDelayMs: 20 }, circuitBreaker: { consecutiveFailures: 100_000 } },
    createSilentLogger(),
    clock,
  );
  t.teardown(() => router.close());
  let hops = 0;
  for (let i = 0; i < 5; i++) {
    const before = agent.stats.calls;
    const started = Date.now();
    firstRead = undefined;
    const call = router.invoke(params({ timeoutMs: 200 }));
    const deadlineAt = firstRead! + 200;
    const err = await t.throwsAsync(call);
    const elapsed = Date.now() - started;
    t.true([Code.Unavailable, Code.DeadlineExceeded].includes(ConnectError.from(err).code));
    hops += agent.stats.calls - before;
    // Invocation.deadline is the exact hop deadline the router set (grpc-timeout is relative and
    // re-anchored on receipt, so the agent's transport deadline drifts by the transit time).
    for (const d of agent.stats.invocationDeadlines.slice(before))
      t.true(d <= deadlineAt, `hop deadline ${d - deadlineAt} ms after the caller's`);
    t.true(elapsed < 1_500, `gave up after ${elapsed} ms`);
  }
  t.true(hops > 5, `it retried within the deadline (${hops} hops)`);
});

test("router - round-robin when scoring data is missing, and open circuits or zombies are never chosen", async (t) => {
  const registry = createFakeRoutableAgents([
    echoAgentRecord("r1", "127.0.0.1:1"),
    echoAgentRecord("r2", "127.0.0.1:2"),
    echoAgentRecord("r3", "127.0.0.1:3", { status: 3 }),
  ]);
  const router = makeRouter(registry, {});
  t.teardown(() => router.close());
  const picks = Array.from({ length: 6 }, () => router.route("t1", "echo", {}));
  t.true(picks.every((p) => p.mode === RouteMode.ROUND_ROBIN));
  t.deepEqual(picks.map((p) => p.agent.name).sort(), ["r1", "r1", "r1", "r2", "r2", "r2"]);
  t.is(picks[0]!.agent.name === picks[1]!.agent.name, false);
});
