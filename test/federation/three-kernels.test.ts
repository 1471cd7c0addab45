import test from "ava";
import { Code } from "@connectrpc/connect";
import { AgentRegistryService } from "../../gen/nops/kernel/v1/agent_registry_pb.js";
import { RoutingService } from "../../gen/nops/kernel/v1/routing_pb.js";
import { DELEGATION_HEADER, KERNEL_LABEL } from "../../src/federation/index.js";
import { HOPS_HEADER } from "../../src/routing/index.js";
import type { EchoAgent } from "../routing/fixtures/echo-agent.js";
import { startFedKernel, eventually, type FedKernel } from "./two-kernels.js";
import { FAST_FEDERATION, failure, handshake, mintDelegation, pinPeer, startKernelAgent } from "./fed-fixtures.js";

// Three trust domains on loopback: A peers B and C, B peers C. A keeps the default hop limit (1);
// B and C agree to calls that crossed two kernels (maxHops 2), so B may pass a call on to C.
let a: FedKernel;
let b: FedKernel;
let c: FedKernel;
let cx: EchoAgent;
let deep: EchoAgent;
let aOnly: EchoAgent;
const agents: EchoAgent[] = [];

const text = (s: string) => new TextEncoder().encode(s);
const decode = (b: Uint8Array) => new TextDecoder().decode(b);
const all = { tenants: ["acme"], capabilities: ["*"] };
const withHops = (maxHops: number) => ({ ...FAST_FEDERATION, federation: { ...FAST_FEDERATION.federation, maxHops } });

test.before(async () => {
  [a, b, c] = await Promise.all([
    startFedKernel("edge-a", "edge-a.test", FAST_FEDERATION),
    startFedKernel("edge-b", "edge-b.test", withHops(2)),
    startFedKernel("edge-c", "edge-c.test", withHops(2)),
  ]);
  // A's agreement with C lets acme reach capabilities "cx" and "both" only; everything else is open.
  await pinPeer(a, b, { inbound: all, outbound: all });
  await pinPeer(b, a, { inbound: all, outbound: all });
  await pinPeer(a, c, { inbound: all, outbound: { tenants: ["acme"], capabilities: ["cx", "both"] } });
  await pinPeer(c, a, { inbound: { tenants: ["acme"], capabilities: ["cx", "both"] }, outbound: all });
  await pinPeer(b, c, { inbound: all, outbound: all });
  await pinPeer(c, b, { inbound: all, outbound: all });
  await handshake(a, b);
  await handshake(a, c);
  await handshake(b, c);
  cx = await startKernelAgent(c, "acme", "cx", "cx");
  deep = await startKernelAgent(c, "acme", "deep", "deep");
  aOnly = await startKernelAgent(a, "acme", "a-only", "a-only");
  agents.push(cx, deep, aOnly, await startKernelAgent(b, "acme", "both-b", "both"));
  agents.push(await startKernelAgent(c, "acme", "both-c", "both"));
  const routable = (k: FedKernel, capability: string) =>
    eventually(
      () =>
        k
          .client(RoutingService, { kernel: k, transport: "grpc" })
          .route({ tenant: "acme", capability })
          .then(
            (r) => r.agent,
            () => undefined,
          ),
      `${k.spiffeId} to route ${capability}`,
    );
  // A learns C's catalog; B learns C's and A's.
  await Promise.all([routable(a, "cx"), routable(a, "both"), routable(b, "deep"), routable(b, "a-only")]);
});

test.after.always(async () => {
  // Kernels first: an agent's server waits for the kernels' channels to close.
  await Promise.all([a?.stop(), b?.stop(), c?.stop()]);
  await Promise.all(agents.map((x) => x.close()));
});

const acceptsOn = (k: FedKernel, from: number) =>
  k
    .audit("federation.accept")
    .slice(from)
    .map((r) => ({ actor: r.actor, ...(JSON.parse(r.details) as { hops: number; originalPrincipal: string }) }));

for (const transport of ["grpc", "connect"] as const) {
  test.serial(
    `three kernels - Invoke on A reaches the agent only C has, directly (one hop), over ${transport}`,
    async (t) => {
      const routing = a.client(RoutingService, { kernel: a, transport });
      const [onB, onC, calls] = [
        b.audit("federation.accept").length,
        c.audit("federation.accept").length,
        cx.stats.calls,
      ];
      const route = await routing.route({ tenant: "acme", capability: "cx" });
      t.is(route.agent?.labels[KERNEL_LABEL], c.spiffeId);
      const res = await routing.invoke(
        { tenant: "acme", capability: "cx", payload: text(`to C over ${transport}`), contentType: "text/plain" },
        { timeoutMs: 20_000 },
      );
      t.is(decode(res.payload), `to C over ${transport}`);
      t.is(res.agentName, "cx");
      t.is(cx.stats.calls, calls + 1, "C's agent executed the call once");
      t.deepEqual(
        acceptsOn(c, onC).map(({ actor, hops }) => ({ actor, hops })),
        [{ actor: a.spiffeId, hops: 1 }],
        "C accepted one call from A that crossed one kernel boundary",
      );
      t.deepEqual(acceptsOn(b, onB), [], "B was not on the path");
    },
  );

  test.serial(
    `three kernels - an agent only a two-hop path reaches is not routed by A (agreement, no transitive catalogs), over ${transport}`,
    async (t) => {
      const routing = a.client(RoutingService, { kernel: a, transport });
      const [onB, onC, calls] = [
        b.audit("federation.accept").length,
        c.audit("federation.accept").length,
        deep.stats.calls,
      ];
      // C offers "deep", but A's agreement with C does not cover it, and B's catalog offers only B's own agents.
      const direct = await failure(routing.invoke({ tenant: "acme", capability: "deep", payload: text("x") }));
      t.is(direct.code, Code.Unavailable, direct.message);
      t.regex(direct.message, /no live agent offers capability "deep"/);
      const viaB = await failure(
        routing.invoke({
          tenant: "acme",
          capability: "deep",
          payload: text("x"),
          constraints: { labels: { [KERNEL_LABEL]: b.spiffeId } },
        }),
      );
      t.is(viaB.code, Code.Unavailable, viaB.message);
      t.is(deep.stats.calls, calls, "C's agent never saw the call");
      t.deepEqual(acceptsOn(b, onB), []);
      t.deepEqual(acceptsOn(c, onC), []);
    },
  );
}

test.serial(
  "three kernels - x-nops-hops counts each crossing; a kernel forwards only under its hop limit and refuses over it",
  async (t) => {
    // The test speaks as kernel A to B (A's kernel SVID, a delegation signed by A): a call that crossed one boundary.
    const asA = a.client(RoutingService, { kernel: b, transport: "grpc", as: "kernel" });
    const call = async (capability: string, hops: string) =>
      asA.invoke(
        { tenant: "acme", capability, payload: text(`${capability} at ${hops}`) },
        {
          headers: { [DELEGATION_HEADER]: await mintDelegation(a, { aud: b.spiffeId }), [HOPS_HEADER]: hops },
          timeoutMs: 20_000,
        },
      );

    // 1. B has no "deep" agent; at one hop and maxHops 2 it forwards to C, which sees the second crossing.
    const onC = c.audit("federation.accept").length;
    const deepCalls = deep.stats.calls;
    const res = await call("deep", "1");
    t.is(decode(res.payload), "deep at 1");
    t.is(deep.stats.calls, deepCalls + 1);
    const accepted = acceptsOn(c, onC);
    t.is(accepted.length, 1);
    t.is(accepted[0]!.actor, b.spiffeId, "C's caller is B, the kernel that forwarded");
    t.is(accepted[0]!.hops, 2, "x-nops-hops is 2 on the second crossing");
    t.is(accepted[0]!.originalPrincipal, a.spiffeId, "C knows whom B acted for");
    const forwards = b.audit("federation.forward");
    t.regex(forwards.at(-1)!.details, /"hops":2/);

    // 2. The same call after two crossings stops at B: its limit is reached, it is not forwarded again.
    const stopped = await failure(call("deep", "2"));
    t.is(stopped.code, Code.Unavailable, stopped.message);
    t.is(deep.stats.calls, deepCalls + 1, "no third crossing");

    // 3. A loop: a call from A for an agent only A has. B (maxHops 2) passes it back to A, whose own limit
    //    is 1: A refuses the second crossing (audited there) and its agent never runs the call.
    const refusalsA = a.audit("federation.delegation").length;
    const aCalls = aOnly.stats.calls;
    const loop = await failure(call("a-only", "1"));
    t.is(loop.code, Code.FailedPrecondition, loop.message);
    t.regex(loop.message, /too many kernels/);
    t.is(aOnly.stats.calls, aCalls, "A's agent never saw the looped call");
    const refusals = a.audit("federation.delegation").slice(refusalsA);
    t.is(refusals.length, 1);
    t.is(refusals[0]!.actor, b.spiffeId);
    t.regex(refusals[0]!.details, /hop count 2 outside 1\.\.1/);

    // 4. Over B's own limit on arrival: refused before anything runs.
    const over = await failure(call("deep", "3"));
    t.is(over.code, Code.FailedPrecondition, over.message);
    t.is(deep.stats.calls, deepCalls + 1);
  },
);

test.serial(
  "three kernels - between two peers offering a capability, A picks by the load their catalogs report",
  async (t) => {
    const beat = async (k: FedKernel, name: string, latencyP50Ms: number, inFlight: number) => {
      const registry = k.client(AgentRegistryService, { kernel: k, transport: "grpc" });
      const agent = (await registry.listAgents({ tenant: "acme" })).agents.find((x) => x.name === name)!;
      await registry.heartbeat({ tenant: "acme", id: agent.id, load: { latencyP50Ms, inFlight } });
    };
    const routing = a.client(RoutingService, { kernel: a, transport: "grpc" });
    const routedTo = (peer: FedKernel) =>
      eventually(
        () =>
          routing
            .route({ tenant: "acme", capability: "both" })
            .then((r) => (r.agent?.labels[KERNEL_LABEL] === peer.spiffeId ? r : undefined)),
        `A to prefer ${peer.spiffeId}`,
      );
    // C's agent reports itself slow and busy, B's fast and idle: A sends the call to B.
    await Promise.all([beat(c, "both-c", 500, 10), beat(b, "both-b", 1, 0)]);
    const toB = await routedTo(b);
    t.regex(toB.reason, /remote: peer kernel spiffe:\/\/edge-b\.test.*score/);
    const res = await routing.invoke(
      { tenant: "acme", capability: "both", payload: text("load") },
      { timeoutMs: 20_000 },
    );
    t.is(res.agentName, "both-b");
    // The loads swap: so does A's choice.
    await Promise.all([beat(c, "both-c", 1, 0), beat(b, "both-b", 500, 10)]);
    await routedTo(c);
    const again = await routing.invoke(
      { tenant: "acme", capability: "both", payload: text("load") },
      { timeoutMs: 20_000 },
    );
    t.is(again.agentName, "both-c");
  },
);
