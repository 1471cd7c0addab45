import test from "ava";
import { Code, ConnectError } from "@connectrpc/connect";
import {
  AgentRegistryService,
  WatchAgentsResponse_ChangeType as ChangeType,
} from "../../gen/nops/kernel/v1/agent_registry_pb.js";
import { RoutingService } from "../../gen/nops/kernel/v1/routing_pb.js";
import { DELEGATION_HEADER } from "../../src/federation/index.js";
import { HOPS_HEADER } from "../../src/routing/index.js";
import type { EchoAgent } from "../routing/fixtures/echo-agent.js";
import { startFedKernel, eventually, type FedKernel } from "./two-kernels.js";
import {
  developerClient,
  FAST_FEDERATION,
  handshake,
  mintDelegation,
  pinPeer,
  startKernelAgent,
} from "./fed-fixtures.js";

// A's catalog of B follows only B's watch: the sync interval (and retry delay) is 20 s and its
// delegation lives 30 s, so anything A learns within 10 s of a change came over the open stream.
const SLOW_SYNC = 20_000;
// C renews its watch of B every 2/3 of a 3 s delegation.
const SHORT_TTL_S = 3;

let a: FedKernel;
let b: FedKernel;
let c: FedKernel;
const agents: EchoAgent[] = [];
const agreement = {
  inbound: { tenants: ["acme"], capabilities: ["*"] },
  outbound: { tenants: ["acme"], capabilities: ["*"] },
};
const none = { inbound: { tenants: ["acme"], capabilities: ["*"] }, outbound: { tenants: [], capabilities: [] } };

const routes = (from: FedKernel, capability: string) =>
  from
    .client(RoutingService, { kernel: from, transport: "grpc" })
    .route({ tenant: "acme", capability })
    .then(
      (r) => r.agent?.name,
      () => undefined,
    );

test.before(async () => {
  const federation = (extra: Record<string, number>) => ({
    ...FAST_FEDERATION,
    federation: { ...FAST_FEDERATION.federation, ...extra },
  });
  [a, b, c] = await Promise.all([
    startFedKernel("edge-a", "edge-a.test", federation({ catalogRefreshMs: SLOW_SYNC, catalogStalenessMs: 60_000 })),
    startFedKernel("edge-b", "edge-b.test", FAST_FEDERATION),
    startFedKernel("edge-c", "edge-c.test", federation({ delegationTtlSeconds: SHORT_TTL_S })),
  ]);
  await pinPeer(a, b, agreement);
  await pinPeer(c, b, agreement);
  await pinPeer(b, a, none);
  await pinPeer(b, c, none);
  await handshake(a, b);
  await handshake(c, b);
  agents.push(await startKernelAgent(b, "acme", "first", "first"));
  await eventually(() => routes(a, "first"), "A to learn B's catalog");
  await eventually(() => routes(c, "first"), "C to learn B's catalog");
});

test.after.always(async () => {
  await Promise.all([a?.stop(), b?.stop(), c?.stop()]);
  await Promise.all(agents.map((x) => x.close()));
});

test.serial(
  "catalog watch - an agent registered on B is routable from A at once, and not once deregistered",
  async (t) => {
    t.is(await routes(a, "second"), undefined, "A knows no agent of capability second yet");
    const registered = Date.now();
    agents.push(await startKernelAgent(b, "acme", "second", "second"));
    t.is(await eventually(() => routes(a, "second"), "A to route second to B"), "second");
    const learned = Date.now() - registered;
    t.true(learned < SLOW_SYNC / 2, `learned in ${learned} ms, long before a sync tick or renewal could bring it`);

    const registry = developerClient(b, AgentRegistryService);
    const { agents: listed } = await registry.listAgents({ tenant: "acme", capability: "second" });
    const deregistered = Date.now();
    await registry.deregisterAgent({ tenant: "acme", id: listed[0]!.id });
    await eventually(async () => ((await routes(a, "second")) === undefined ? true : undefined), "A to drop second");
    const dropped = Date.now() - deregistered;
    t.true(dropped < SLOW_SYNC / 2, `dropped in ${dropped} ms`);
    t.is(await routes(a, "first"), "first", "the rest of the catalog is untouched");
  },
);

test.serial("catalog watch - B ends a watch opened with a delegation when the delegation expires", async (t) => {
  const exp = Math.floor(Date.now() / 1000) + 2;
  const token = await mintDelegation(a, { aud: b.spiffeId, exp });
  const stream = a
    .client(AgentRegistryService, { kernel: b, transport: "grpc", as: "kernel" })
    .watchAgents(
      { tenant: "acme", syncIntervalMs: 200 },
      { headers: { [DELEGATION_HEADER]: token, [HOPS_HEADER]: "1" }, signal: AbortSignal.timeout(60_000) },
    );
  const seen: ChangeType[] = [];
  const err = await t.throwsAsync(
    (async () => {
      for await (const m of stream) seen.push(m.type);
    })(),
  );
  const ce = ConnectError.from(err);
  t.is(ce.code, Code.Unauthenticated, ce.message);
  t.regex(ce.rawMessage, /delegation expired; reopen the stream with a fresh delegation/);
  t.true(Date.now() >= exp * 1000, "not before the expiry");
  t.is(seen[0], ChangeType.EXISTING);
  t.true(seen.filter((x) => x === ChangeType.SYNCED).length >= 2, "synced on open and on the ticks after");
});

test.serial(
  "catalog watch - C renews its watch before the delegation expires, and the link never goes down",
  async (t) => {
    const watches = () => b.logs.filter((l) => l.includes("AgentRegistryService/WatchAgents")).length;
    const failures = () => c.logs.filter((l) => l.includes("peer catalog watch failed")).length;
    const before = { watches: watches(), failures: failures() };
    // Three delegation lifetimes: every Route of C in them finds B's agent.
    const until = Date.now() + 3 * SHORT_TTL_S * 1000;
    let routed = 0;
    while (Date.now() < until) {
      t.is(await routes(c, "first"), "first", `route ${routed + 1} found B's agent`);
      routed++;
      await new Promise((r) => setTimeout(r, 100));
    }
    t.true(watches() - before.watches >= 3, `B saw ${watches() - before.watches} of C's watches end (renewals)`);
    t.is(failures(), before.failures, "no watch of C failed");
    t.is(c.logs.filter((l) => l.includes("delegation expired")).length, 0, "C never ran into B's expiry");
  },
);
