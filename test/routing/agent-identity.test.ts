import test from "ava";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { createNoopMeter } from "@opentelemetry/api";
import { AgentSchema, type Agent } from "../../gen/nops/kernel/v1/agent_registry_pb.js";
import { systemClock } from "../../src/common/clock.js";
import { createTlsMaterial } from "../../src/identity/spiffe/tls-material.js";
import { createRouter, type InvokeParams } from "../../src/routing/router.js";
import { resolveRoutingOptions, type RoutingOptionsInput } from "../../src/routing/routing-options.js";
import { createSilentLogger } from "../../src/telemetry/logger.js";
import { createTestCa } from "../helpers/test-ca.js";
import { contextOf, createStaticSource } from "../identity/spiffe/support.js";
import { openTestStore, auditRows } from "../authz/fixtures.js";
import { startEchoAgent } from "./fixtures/echo-agent.js";
import { createFakeRoutableAgents, echoAgentRecord } from "./fixtures/fake-routable-agents.js";

const TD = "nops.test";
const A1 = `spiffe://${TD}/nops/tenant/t1/agent/a1`;
const OTHER = `spiffe://${TD}/nops/tenant/t2/agent/b1`;
const logger = createSilentLogger();

function params(): InvokeParams {
  return {
    tenant: "t1",
    capability: "echo",
    payload: new TextEncoder().encode("hi"),
    contentType: "text/plain",
    constraints: {},
    idempotent: true,
    timeoutMs: 10_000,
    signal: new AbortController().signal,
  };
}

async function setup(t: { teardown(fn: () => unknown): void }, routing: RoutingOptionsInput = {}) {
  const ca = await createTestCa(TD);
  const svid = (spiffeId: string) => ca.issue({ spiffeId, ipAddresses: ["127.0.0.1"], dnsNames: ["localhost"] });
  // The agent's server identity, swapped by the test (rotation or impersonation).
  const agentSource = createStaticSource(contextOf(await svid(A1), [ca]));
  const agentTls = createTlsMaterial({ source: agentSource, clock: systemClock, logger });
  const agent = await startEchoAgent({ name: "a1", credentials: agentTls.grpcServerCredentials() });
  const kernelTls = createTlsMaterial({
    source: createStaticSource(contextOf(await svid(`spiffe://${TD}/nops/kernel/edge-1`), [ca])),
    clock: systemClock,
    logger,
  });
  const store = openTestStore();
  const record = (revision: bigint, spiffeId = A1): Agent =>
    create(AgentSchema, { ...echoAgentRecord("a1", `127.0.0.1:${agent.port}`), revision, spiffeId });
  const agents = createFakeRoutableAgents([record(1n)]);
  const router = createRouter(
    {
      agents,
      tls: (id, onReject) => kernelTls.clientOptions({ ...(id === undefined ? {} : { allowedIds: [id] }), onReject }),
      egress: () => undefined,
      trustDomain: TD,
      audit: store.audit,
      clock: systemClock,
      logger,
      meter: createNoopMeter(),
    },
    resolveRoutingOptions(routing),
  );
  t.teardown(async () => {
    router.close();
    await agent.close();
    agentTls.close();
    kernelTls.close();
  });
  return { svid, agentSource, ca, agent, agents, record, router, db: store.db };
}

test("router - an agent endpoint is called only while it presents its registered SPIFFE ID, rotation included", async (t) => {
  const s = await setup(t);
  await s.router.invoke(params());
  t.is(s.agent.stats.calls, 1);

  // Rotation: a new certificate with the same id. A new connection verifies it and still calls.
  s.agentSource.set(contextOf(await s.svid(A1), [s.ca]));
  s.router.forgetAgent(s.agents.agents[0]!);
  await s.router.invoke(params());
  t.is(s.agent.stats.calls, 2);

  // The process now presents another tenant's id: the next handshake is refused, nothing is sent.
  s.agentSource.set(contextOf(await s.svid(OTHER), [s.ca]));
  s.router.forgetAgent(s.agents.agents[0]!);
  const err = ConnectError.from(await t.throwsAsync(s.router.invoke(params())));
  t.is(err.code, Code.Unavailable);
  t.regex(err.rawMessage, new RegExp(`did not present ${A1}`));
  t.is(s.agent.stats.calls, 2, "no request reached the impostor");
  // Barred: not picked again (no second handshake, no second audit row) until its registration changes.
  const again = ConnectError.from(await t.throwsAsync(s.router.invoke(params())));
  t.is(again.code, Code.Unavailable);
  t.throws(() => s.router.route("t1", "echo", {}), { message: /no live agent/ });
  const rows = auditRows(s.db).filter((r) => r.action === "routing.identity_mismatch");
  t.is(rows.length, 1);
  t.is(rows[0]?.resource, "agent/id-a1");
  t.is(rows[0]?.outcome, "denied");

  // A new revision (re-registration) is tried again, and called once it presents its id again.
  s.agentSource.set(contextOf(await s.svid(A1), [s.ca]));
  s.agents.agents[0] = s.record(2n);
  await s.router.invoke(params());
  t.is(s.agent.stats.calls, 3);
});

test("router - an agent with no recorded SPIFFE ID is held to the id scheme in the kernel's trust domain", async (t) => {
  const s = await setup(t);
  s.agents.agents[0] = s.record(1n, "");
  await s.router.invoke(params());
  t.is(s.agent.stats.calls, 1, `${A1} is the scheme id of tenant t1's agent a1`);
  s.agents.agents[0] = create(AgentSchema, { ...s.record(2n, ""), name: "a2" });
  const err = ConnectError.from(await t.throwsAsync(s.router.invoke(params())));
  t.regex(err.rawMessage, /did not present spiffe:\/\/nops\.test\/nops\/tenant\/t1\/agent\/a2/);
  t.is(s.agent.stats.calls, 1);
});

test("router - the identity bar ends after identityMismatchHoldMs: one fresh handshake, refused and audited again", async (t) => {
  const s = await setup(t, { circuitBreaker: { identityMismatchHoldMs: 1 } });
  s.agentSource.set(contextOf(await s.svid(OTHER), [s.ca]));
  for (let i = 0; i < 2; i++) {
    await t.throwsAsync(s.router.invoke(params()));
    await new Promise((r) => setTimeout(r, 5));
  }
  t.is(auditRows(s.db).filter((r) => r.action === "routing.identity_mismatch").length, 2);
  t.is(s.agent.stats.calls, 0);
  // A genuine agent whose identity verifies again is called once the hold has passed.
  s.agentSource.set(contextOf(await s.svid(A1), [s.ca]));
  await s.router.invoke(params());
  t.is(s.agent.stats.calls, 1);
});
