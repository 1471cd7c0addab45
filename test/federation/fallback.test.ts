import test from "ava";
import { ConnectError } from "@connectrpc/connect";
import { AgentRegistryService } from "../../gen/nops/kernel/v1/agent_registry_pb.js";
import { RoutingService } from "../../gen/nops/kernel/v1/routing_pb.js";
import { KERNEL_LABEL } from "../../src/federation/index.js";
import type { EchoAgent } from "../routing/fixtures/echo-agent.js";
import { startFedKernel, eventually, type FedKernel } from "./two-kernels.js";
import { developerClient, FAST_FEDERATION, handshake, pinPeer, startKernelAgent } from "./fed-fixtures.js";

// A and B both offer "svc". A's own agent is preferred; when its circuit opens or it stops being
// routable, A's calls go to B's agent, and they come back to the local agent once it recovers.
let a: FedKernel;
let b: FedKernel;
let local: EchoAgent;
let remote: EchoAgent;
const agents: EchoAgent[] = [];
let beating: ReturnType<typeof setInterval> | undefined;

const text = (s: string) => new TextEncoder().encode(s);
const all = { tenants: ["acme"], capabilities: ["*"] };

test.before(async () => {
  [a, b] = await Promise.all([
    startFedKernel("edge-a", "edge-a.test", {
      ...FAST_FEDERATION,
      // Three failures open the circuit; a probe is let through a second later.
      routing: { circuitBreaker: { consecutiveFailures: 3, halfOpenAfterMs: 1000 } },
      // An agent that stops beating is unroutable (zombie) after 10 s, a generous bound on a loaded machine.
      registry: { heartbeatTtlMs: 5_000, zombieAfterMs: 10_000, reapAfterMs: 600_000 },
    }),
    startFedKernel("edge-b", "edge-b.test", FAST_FEDERATION),
  ]);
  await pinPeer(a, b, { inbound: all, outbound: all });
  await pinPeer(b, a, { inbound: all, outbound: all });
  await handshake(a, b);
  local = await startKernelAgent(a, "acme", "svc-a", "svc");
  remote = await startKernelAgent(b, "acme", "svc-b", "svc");
  agents.push(local, remote, await startKernelAgent(b, "acme", "lone-b", "lone"));
  // svc-a stays healthy by heartbeats for the whole file.
  const registry = developerClient(a, AgentRegistryService);
  const svcA = (await registry.listAgents({ tenant: "acme" })).agents.find((x) => x.name === "svc-a")!;
  beating = setInterval(() => void registry.heartbeat({ tenant: "acme", id: svcA.id }).catch(() => undefined), 1000);
  // A knows B offers "svc" once a route naming B succeeds.
  await eventually(
    () =>
      a
        .client(RoutingService, { kernel: a, transport: "grpc" })
        .route({ tenant: "acme", capability: "svc", constraints: { labels: { [KERNEL_LABEL]: b.spiffeId } } })
        .then(
          (r) => r.agent,
          () => undefined,
        ),
    "A to learn B's catalog",
  );
});

test.after.always(async () => {
  clearInterval(beating);
  await Promise.all([a?.stop(), b?.stop()]);
  await Promise.all(agents.map((x) => x.close()));
});

/** Invokes `capability` on A; the answering agent's name, or the error. */
async function invoke(i: number, capability = "svc"): Promise<string> {
  try {
    const res = await a
      .client(RoutingService, { kernel: a, transport: "grpc" })
      .invoke({ tenant: "acme", capability, payload: text(`call ${i}`) }, { timeoutMs: 20_000 });
    return res.agentName;
  } catch (err) {
    return `error: ${ConnectError.from(err).message}`;
  }
}

/** Calls until `want` answers; returns every answer on the way. */
async function until(want: string, what: string, capability = "svc"): Promise<string[]> {
  const seen: string[] = [];
  await eventually(async () => {
    const who = await invoke(seen.length, capability);
    seen.push(who);
    return who === want ? true : undefined;
  }, what);
  return seen;
}

test.serial(
  "fallback - a failing local agent's open circuit sends calls to the peer's agent, and back when it recovers",
  async (t) => {
    const routing = a.client(RoutingService, { kernel: a, transport: "grpc" });
    t.is(await invoke(0), "svc-a", "local first");
    t.is((await routing.route({ tenant: "acme", capability: "svc" })).agent?.name, "svc-a");
    const remoteBefore = remote.stats.calls;

    local.setFailureRate(1);
    const failing = await until("svc-b", "calls to fall back to B");
    // The non-idempotent calls that failed on the local agent were not retried elsewhere: they opened its circuit.
    t.true(failing.length >= 2, failing.join("\n"));
    t.true(
      failing.slice(0, -1).every((w) => w.startsWith("error:") && /injected failure/.test(w)),
      failing.join("\n"),
    );
    const route = await routing.route({ tenant: "acme", capability: "svc" });
    t.is(route.agent?.labels[KERNEL_LABEL], b.spiffeId);
    t.regex(route.reason, /remote: .*no routable local agent/);
    t.true(route.fallback);
    t.is(await invoke(100), "svc-b", "calls keep going to B while the circuit is open");
    t.true(remote.stats.calls >= remoteBefore + 2);

    // Recovery: once the circuit lets a probe through and it succeeds, calls are local again.
    local.setFailureRate(0);
    const back = await until("svc-a", "calls to come back to the local agent");
    t.true(
      back.every((w) => w === "svc-b" || w === "svc-a"),
      back.join("\n"),
    );
    t.is(await invoke(200), "svc-a");
    t.is((await routing.route({ tenant: "acme", capability: "svc" })).agent?.name, "svc-a");
  },
);

test.serial("fallback - a local agent that stops beating (unroutable) sends calls to the peer, and back", async (t) => {
  const registry = developerClient(a, AgentRegistryService);
  const lone = await startKernelAgent(a, "acme", "lone-a", "lone");
  agents.push(lone);
  const { agents: listed } = await registry.listAgents({ tenant: "acme" });
  const id = listed.find((x) => x.name === "lone-a")!.id;
  // A knows B's "lone" before the local agent goes quiet (its catalog is read every 500 ms).
  await eventually(
    () =>
      a
        .client(RoutingService, { kernel: a, transport: "grpc" })
        .route({ tenant: "acme", capability: "lone", constraints: { labels: { [KERNEL_LABEL]: b.spiffeId } } })
        .then(
          (r) => r.agent,
          () => undefined,
        ),
    "A to learn B's lone agent",
  );
  t.is(await invoke(0, "lone"), "lone-a", "local first");
  const before = lone.stats.calls;
  // No heartbeat: lone-a turns zombie (never routed to) and the peer's agent takes the calls.
  const away = await until("lone-b", "calls to go to B once lone-a is unroutable", "lone");
  t.true(
    away.slice(0, -1).every((w) => w === "lone-a"),
    away.join("\n"),
  );
  t.is(lone.stats.calls, before + away.length - 1, "no call was sent to the unroutable agent");
  // It beats again: calls are local again.
  await registry.heartbeat({ tenant: "acme", id });
  const back = await until("lone-a", "calls to come back to lone-a", "lone");
  t.true(
    back.every((w) => w === "lone-b" || w === "lone-a"),
    back.join("\n"),
  );
});
