import test from "ava";
import { Code } from "@connectrpc/connect";
import { FederationService } from "../../gen/nops/federation/v1/federation_pb.js";
import { AgentRegistryService } from "../../gen/nops/kernel/v1/agent_registry_pb.js";
import { AdminService } from "../../gen/nops/kernel/v1/admin_pb.js";
import { RoutingService } from "../../gen/nops/kernel/v1/routing_pb.js";
import { DELEGATION_HEADER, KERNEL_LABEL } from "../../src/federation/index.js";
import { HOPS_HEADER } from "../../src/routing/index.js";
import type { EchoAgent } from "../routing/fixtures/echo-agent.js";
import { startFedKernel, eventually, type FedKernel } from "./two-kernels.js";
import { FAST_FEDERATION, failure, handshake, mintDelegation, pinPeer, startKernelAgent } from "./fed-fixtures.js";

let a: FedKernel;
let b: FedKernel;
let remoteAgent: EchoAgent;
let localAgent: EchoAgent;
const agents: EchoAgent[] = [];

const text = (s: string) => new TextEncoder().encode(s);
const decode = (b: Uint8Array) => new TextDecoder().decode(b);

test.before(async () => {
  a = await startFedKernel("edge-a", "edge-a.test", FAST_FEDERATION);
  b = await startFedKernel("edge-b", "edge-b.test", FAST_FEDERATION);
  // A may send acme's calls for any capability; B accepts acme's calls for "echo" only.
  await pinPeer(a, b, {
    inbound: { tenants: ["acme"], capabilities: ["*"] },
    outbound: { tenants: ["acme"], capabilities: ["*"] },
  });
  await pinPeer(b, a, {
    inbound: { tenants: ["acme"], capabilities: ["echo"] },
    outbound: { tenants: ["acme"], capabilities: ["*"] },
  });
  await handshake(a, b);
  remoteAgent = await startKernelAgent(b, "acme", "echo", "echo");
  localAgent = await startKernelAgent(a, "acme", "local", "local");
  agents.push(remoteAgent, localAgent, await startKernelAgent(b, "acme", "other", "other"));
  // A learns B's catalog on its next refresh.
  await eventually(async () => {
    const { agent } = await a
      .client(RoutingService, { kernel: a, transport: "grpc" })
      .route({
        tenant: "acme",
        capability: "echo",
      })
      .catch(() => ({ agent: undefined }));
    return agent ? true : undefined;
  }, "A to route echo to B");
});

test.after.always(async () => {
  // Kernels first: an agent's server waits for the kernels' channels to close.
  await Promise.all([a?.stop(), b?.stop()]);
  await Promise.all(agents.map((x) => x.close()));
});

for (const transport of ["grpc", "connect"] as const) {
  test.serial(
    `federation - Invoke on A reaches B's agent over ${transport}, trace and deadline carried, audited on both`,
    async (t) => {
      const routing = a.client(RoutingService, { kernel: a, transport });
      const before = remoteAgent.stats.calls;
      const forwardsA = a.audit("federation.forward").length;
      const acceptsB = b.audit("federation.accept").length;
      const traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
      const res = await routing.invoke(
        { tenant: "acme", capability: "echo", payload: text(`hello over ${transport}`), contentType: "text/plain" },
        { headers: { traceparent }, timeoutMs: 20_000 },
      );
      t.is(decode(res.payload), `hello over ${transport}`);
      t.is(res.agentName, "echo");
      t.is(remoteAgent.stats.calls, before + 1, "B's agent executed the call once");
      const last = remoteAgent.stats.traceparents.at(-1)!;
      t.is(last.slice(0, 36), traceparent.slice(0, 36), "the trace id crossed both kernels");
      const deadline = remoteAgent.stats.deadlines.at(-1)!;
      t.true(Number.isFinite(deadline) && deadline <= Date.now() + 20_000, "the caller's deadline bounds the agent's");
      const fwd = a.audit("federation.forward").slice(forwardsA);
      t.is(fwd.length, 1);
      t.is(fwd[0]!.outcome, "ok");
      t.is(fwd[0]!.resource, `peer/${b.spiffeId}`);
      const acc = b.audit("federation.accept").slice(acceptsB);
      t.is(acc.length, 1);
      t.is(acc[0]!.actor, a.spiffeId, "B records the peer kernel as the actor");
      t.regex(acc[0]!.details, /originalPrincipal/);

      // InvokeStream crosses too.
      const chunks: string[] = [];
      for await (const c of routing.invokeStream({
        tenant: "acme",
        capability: "echo",
        payload: text("s"),
        contentType: "text/plain",
      })) {
        chunks.push(decode(c.payload));
      }
      t.true(chunks.length >= 1);
    },
  );
}

test.serial(
  "federation - local agents come first; a route constraint naming the peer sends the call there",
  async (t) => {
    const routing = a.client(RoutingService, { kernel: a, transport: "grpc" });
    const local = await routing.route({ tenant: "acme", capability: "local" });
    t.is(local.agent?.name, "local");
    const remote = await routing.route({ tenant: "acme", capability: "echo" });
    t.is(remote.agent?.labels[KERNEL_LABEL], b.spiffeId);
    t.regex(remote.reason, /remote/);
    // Naming the peer in the constraints: only that peer's agents are candidates.
    const named = await routing.route({
      tenant: "acme",
      capability: "echo",
      constraints: { labels: { [KERNEL_LABEL]: b.spiffeId } },
    });
    t.is(named.agent?.labels[KERNEL_LABEL], b.spiffeId);
    const elsewhere = await failure(
      routing.invoke({
        tenant: "acme",
        capability: "local",
        payload: text("x"),
        constraints: { labels: { [KERNEL_LABEL]: b.spiffeId } },
      }),
    );
    t.is(elsewhere.code, Code.Unavailable, "B offers no 'local': the local agent does not match a constraint naming B");
    // A capability B does not offer stays a local question: no agent anywhere.
    const none = await failure(routing.invoke({ tenant: "acme", capability: "nowhere", payload: text("x") }));
    t.is(none.code, Code.Unavailable);
    // A tenant outside A's outbound agreement is never forwarded.
    const globex = await failure(routing.invoke({ tenant: "globex", capability: "echo", payload: text("x") }));
    t.is(globex.code, Code.Unavailable);
  },
);

test.serial(
  "federation - B refuses what its agreement does not cover, and the egress of A still applies",
  async (t) => {
    const routing = a.client(RoutingService, { kernel: a, transport: "grpc" });
    // "other" is in A's outbound agreement but not in B's inbound one: B says no (authz, audited there).
    const deniesB = b.audit("authz.deny").length;
    const denied = await failure(routing.invoke({ tenant: "acme", capability: "other", payload: text("x") }));
    t.is(denied.code, Code.PermissionDenied, denied.message);
    t.notRegex(denied.message, /egress/);
    t.true(
      b
        .audit("authz.deny")
        .slice(deniesB)
        .some((r) => r.actor === a.spiffeId),
    );

    // A forwarded call is outbound bytes: acme has the default tier 3 here, so personal data never leaves A.
    const before = remoteAgent.stats.calls;
    const blocksA = a.audit("egress.blocked").length;
    const blocked = await failure(
      routing.invoke({
        tenant: "acme",
        capability: "echo",
        payload: text("contact jane.doe@example.com, SSN 123-45-6789"),
        contentType: "text/plain",
      }),
    );
    t.is(blocked.code, Code.PermissionDenied);
    t.regex(blocked.message, /egress blocked/);
    t.is(remoteAgent.stats.calls, before, "B's agent never saw the blocked call");
    // Blocks are audited (coalesced, so a moment later) with the federation destination.
    await eventually(
      () =>
        a
          .audit("egress.blocked")
          .slice(blocksA)
          .some((r) => r.resource.includes("federation"))
          ? true
          : undefined,
      "the block's audit row on A",
    );
    t.pass();
  },
);

test.serial(
  "federation - delegations: wrong audience, expired, replayed, tenant outside the agreement, hop limit; each audited",
  async (t) => {
    // The test speaks as kernel A itself (A's kernel SVID, delegations signed with it).
    const asA = a.client(RoutingService, { kernel: b, transport: "grpc", as: "kernel" });
    const call = (token: string, tenant = "acme", hops = "1") =>
      asA.invoke(
        { tenant, capability: "echo", payload: text("d") },
        { headers: { [DELEGATION_HEADER]: token, [HOPS_HEADER]: hops } },
      );
    const refusals = () => b.audit("federation.delegation").length;
    const start = refusals();

    const ok = await mintDelegation(a, { aud: b.spiffeId });
    t.is(decode((await call(ok)).payload), "d", "a valid delegation is honoured");
    t.is((await failure(call(ok))).code, Code.Unauthenticated, "replayed");
    t.is(
      (await failure(call(await mintDelegation(a, { aud: a.spiffeId })))).code,
      Code.PermissionDenied,
      "wrong audience",
    );
    const past = Math.floor(Date.now() / 1000) - 120;
    t.is(
      (await failure(call(await mintDelegation(a, { aud: b.spiffeId, iat: past, exp: past + 30 })))).code,
      Code.Unauthenticated,
      "expired",
    );
    t.is(
      (await failure(call(await mintDelegation(a, { aud: b.spiffeId, tenant: "globex" }), "globex"))).code,
      Code.PermissionDenied,
      "tenant outside the agreement",
    );
    t.is(
      (await failure(call(await mintDelegation(a, { aud: b.spiffeId }), "acme", "2"))).code,
      Code.FailedPrecondition,
      "over the hop limit",
    );
    const rows = b.audit("federation.delegation").slice(start);
    t.is(rows.length, 5, rows.map((r) => r.details).join("\n"));
    t.true(rows.every((r) => r.outcome === "denied" && r.actor === a.spiffeId));
    // A delegation names its tenant: it cannot be used for another tenant's request.
    const other = await failure(call(await mintDelegation(a, { aud: b.spiffeId }), "globex"));
    t.is(other.code, Code.PermissionDenied);
  },
);

test.serial(
  "federation - a peer kernel is never an operator: admin and registry writes are PERMISSION_DENIED, audited",
  async (t) => {
    const before = b.audit("authz.deny").length;
    // A's kernel SVID on B's port: the peer kernel, with and without a valid delegation.
    const asA = <S extends Parameters<FedKernel["client"]>[0]>(s: S) =>
      a.client(s, { kernel: b, transport: "grpc", as: "kernel" });
    const token = await mintDelegation(a, { aud: b.spiffeId });
    for (const p of [
      asA(FederationService).listPeers({}),
      asA(FederationService).removePeer({ spiffeId: a.spiffeId }),
      asA(AdminService).getStatus({}),
      asA(AgentRegistryService).registerAgent(
        { tenant: "acme", name: "evil", version: "1", endpoint: "127.0.0.1:1", capabilities: [{ name: "echo" }] },
        { headers: { [DELEGATION_HEADER]: token, [HOPS_HEADER]: "1" } },
      ),
    ]) {
      t.is((await failure(p)).code, Code.PermissionDenied);
    }
    const denials = b
      .audit("authz.deny")
      .slice(before)
      .filter((r) => r.actor === a.spiffeId);
    t.true(denials.length >= 4, JSON.stringify(denials));
  },
);
