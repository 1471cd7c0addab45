import test, { type ExecutionContext } from "ava";
import Database from "better-sqlite3";
import { fromBinary } from "@bufbuild/protobuf";
import { Code, ConnectError, type Client } from "@connectrpc/connect";
import { AgentRegistryService } from "../../gen/nops/kernel/v1/agent_registry_pb.js";
import { RoutingService } from "../../gen/nops/kernel/v1/routing_pb.js";
import { EventBusService } from "../../gen/nops/kernel/v1/event_bus_pb.js";
import { EgressBlockedSchema } from "../../gen/nops/events/v1/egress_events_pb.js";
import { EventEnvelopeSchema } from "../../gen/nops/events/v1/envelope_pb.js";
import { encodeOverrideGrant, type OverrideGrant } from "../../src/egress/index.js";
import { BOTH, startTestKernel, type TestKernel, type TransportName } from "../helpers/kernel.js";
import { startEchoAgent, type EchoAgent } from "../routing/fixtures/echo-agent.js";
import { startNatsTopology } from "../helpers/nats-servers.js";
import { waitFor } from "../helpers/processes.js";

const text = (s: string) => new TextEncoder().encode(s);
const SSN = "536-22-1234";
const CARD = "4111111111111111";
const TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
const approvers = {
  alice: "alice-approver-key-0123456789abcdef0",
  bob: "bob-approver-key-0123456789abcdef000",
};

async function kernelWithAgent(
  t: ExecutionContext,
  transport: TransportName,
  egress: Record<string, unknown> = {},
): Promise<{ k: TestKernel; agent: EchoAgent; routing: Client<typeof RoutingService> }> {
  const agent = await startEchoAgent({ name: "echo" });
  t.teardown(() => agent.close());
  // acme is tier 1 (metadata may leave), globex tier 3 (no PII may leave).
  const k = await startTestKernel(t, {
    egress: { tenantTiers: { acme: 1, globex: 3 }, approvers, dgeTimeoutMs: 30_000, ...egress },
  });
  const registry = k.client(AgentRegistryService, transport);
  for (const tenant of ["acme", "globex"]) {
    await registry.registerAgent({
      tenant,
      name: "echo",
      version: "1",
      endpoint: `127.0.0.1:${agent.port}`,
      capabilities: [{ name: "echo" }],
    });
  }
  return { k, agent, routing: k.client(RoutingService, transport) };
}

/** Every text column of the outbox, its headers and the audit log, and every log line. */
function recorded(k: TestKernel): string {
  const db = new Database(k.kernel.options.databasePath, { readonly: true });
  try {
    const rows = [
      ...db.prepare("SELECT * FROM outbox").all(),
      ...db.prepare("SELECT * FROM outbox_headers").all(),
      ...db.prepare("SELECT * FROM audit_log").all(),
    ] as Record<string, unknown>[];
    const cells = rows.flatMap((r) =>
      Object.values(r).map((v) => (v instanceof Uint8Array ? Buffer.from(v).toString("latin1") : String(v))),
    );
    return [...cells, ...k.logs].join("\n");
  } finally {
    db.close();
  }
}

function blockedEvents(k: TestKernel) {
  const db = new Database(k.kernel.options.databasePath, { readonly: true });
  try {
    return (
      db.prepare("SELECT envelope FROM outbox WHERE type = 'egress.blocked.v1' ORDER BY id").all() as {
        envelope: Uint8Array;
      }[]
    ).map((r) => fromBinary(EgressBlockedSchema, fromBinary(EventEnvelopeSchema, r.envelope).payload));
  } finally {
    db.close();
  }
}

function grant(over: Partial<OverrideGrant>): string {
  const now = Date.now();
  const g: OverrideGrant = {
    id: `g-${Math.random().toString(36).slice(2)}`,
    tenant: "globex",
    reason: "incident 7: card refund evidence",
    classification: "D4",
    destinations: ["agent*"],
    issuedAt: now,
    expiresAt: now + 10 * 60_000,
    ...over,
  };
  return encodeOverrideGrant(g, [
    { id: "alice", secret: approvers.alice },
    { id: "bob", secret: approvers.bob },
  ]);
}

for (const transport of BOTH) {
  test(`egress whole call - PII anywhere in an agent call is blocked before the agent sees anything (${transport})`, async (t) => {
    const { agent, routing } = await kernelWithAgent(t, transport);
    const vectors: { name: string; req: Record<string, unknown>; headers?: Record<string, string> }[] = [
      { name: "payload", req: { payload: text(`ssn ${SSN}`), contentType: "text/plain" } },
      { name: "content type", req: { payload: text("{}"), contentType: `application/json; ref=${SSN}` } },
      {
        name: "tracestate",
        req: { payload: text("{}"), contentType: "application/json" },
        headers: { traceparent: TRACEPARENT, tracestate: `vendor=${SSN}` },
      },
    ];
    for (const v of vectors) {
      const err = await t.throwsAsync(
        routing.invoke({ tenant: "globex", capability: "echo", ...v.req }, v.headers ? { headers: v.headers } : {}),
        undefined,
        v.name,
      );
      t.is(ConnectError.from(err).code, Code.PermissionDenied, `${v.name}: ${ConnectError.from(err).message}`);
    }
    t.is(agent.stats.calls, 0, "nothing of a blocked call reached the agent");

    // A request id the caller chose is forwarded (metadata and Invocation), so it is classified.
    const err = await t.throwsAsync(
      routing.invoke(
        { tenant: "globex", capability: "echo", payload: text("{}"), contentType: "application/json" },
        { headers: { "x-request-id": `req-${CARD}` } },
      ),
    );
    t.is(ConnectError.from(err).code, Code.PermissionDenied, "caller request id");
    t.is(agent.stats.calls, 0);

    // The same call without the data goes through.
    await routing.invoke(
      { tenant: "globex", capability: "echo", payload: text("{}"), contentType: "application/json" },
      { headers: { traceparent: TRACEPARENT, tracestate: "vendor=abc" } },
    );
    t.is(agent.stats.calls, 1);
  });

  test(`egress whole call - blocked records and logs never carry the blocked value (${transport})`, async (t) => {
    const { k, routing } = await kernelWithAgent(t, transport);
    const email = "jane.roe@example.org";
    for (const [payload, contentType, tracestate] of [
      [`ssn ${SSN}`, "text/plain", "vendor=abc"],
      ["{}", `application/json; card=${CARD}`, "vendor=abc"],
      ["{}", "application/json", `vendor=${email}`],
    ] as const) {
      await t.throwsAsync(
        routing.invoke(
          { tenant: "globex", capability: "echo", payload: text(payload), contentType },
          { headers: { traceparent: TRACEPARENT, tracestate } },
        ),
      );
    }
    await k.kernel.stop();
    const events = blockedEvents(k);
    t.true(events.length >= 1, "the blocks are recorded");
    for (const e of events) {
      t.is(e.decision?.destination, "agent/nops.agent.v1.AgentService/Handle");
      t.is(e.decision?.dataType, "/nops.agent.v1.AgentService/Handle");
    }
    t.is(
      events.reduce((n, e) => n + e.count, 0),
      3,
      "every refusal is counted",
    );
    const all = recorded(k);
    for (const value of [SSN, CARD, email]) t.false(all.includes(value), `${value} recorded somewhere`);
    // Nor the card masked or cut ("4111 **** **** 1111", "4111-1111-…"). Not a bare "4111": request ids,
    // timestamps and hashes in the rows and logs hold those four digits by chance.
    const card = /4111[\s-]*(?:1111|[*xX•])/.exec(all);
    t.is(card, null, `the card recorded: …${card ? all.slice(card.index - 80, card.index + 40) : ""}…`);
  });

  test(`egress whole call - malformed trace headers are dropped, not forwarded (${transport})`, async (t) => {
    const { routing, agent } = await kernelWithAgent(t, transport);
    const call = (headers: Record<string, string>) =>
      routing.invoke(
        { tenant: "acme", capability: "echo", payload: text("{}"), contentType: "application/json" },
        { headers },
      );
    await call({ traceparent: "00-not-a-trace-id-at-all-01", tracestate: "vendor=abc" });
    await call({ traceparent: TRACEPARENT, tracestate: "Not A Key=1" });
    t.is(agent.stats.calls, 2);
    const [first, second] = agent.stats.invocations.map(
      (s) => JSON.parse(s) as { traceparent: string; tracestate: string },
    );
    t.deepEqual([first?.traceparent, first?.tracestate], ["", ""], "malformed traceparent: no trace forwarded");
    t.deepEqual([second?.traceparent, second?.tracestate], [TRACEPARENT, ""], "malformed tracestate dropped alone");
    for (const md of agent.stats.metadata) {
      t.not(md.traceparent, "00-not-a-trace-id-at-all-01");
      t.not(md.tracestate, "Not A Key=1");
      t.is(md["x-enis-override"], undefined);
    }
  });

  test(`egress whole call - a break-glass grant releases data only up to its declared class, and never leaves (${transport})`, async (t) => {
    // A window longer than the test: the count row is written when the kernel stops.
    const { k, routing, agent } = await kernelWithAgent(t, transport, { eventFlushMs: 60_000 });
    const card = { tenant: "globex", capability: "echo", payload: text(`card ${CARD}`), contentType: "text/plain" };
    for (const cls of ["D0", "D2", "D3"] as const) {
      const err = await t.throwsAsync(
        routing.invoke(card, { headers: { "x-enis-override": grant({ classification: cls }) } }),
      );
      t.is(ConnectError.from(err).code, Code.PermissionDenied, cls);
      t.regex(
        ConnectError.from(err).rawMessage,
        /override_class_exceeded/,
        `${cls}\n${k.logs.filter((l) => l.includes("DGE")).join("\n")}`,
      );
    }
    t.is(agent.stats.calls, 0, "a grant below the data's class releases nothing");
    const ok = await routing.invoke(card, { headers: { "x-enis-override": grant({ classification: "D4" }) } });
    t.is(new TextDecoder().decode(ok.payload), `card ${CARD}`);
    t.is(agent.stats.calls, 1);
    t.is(agent.stats.metadata[0]?.["x-enis-override"], undefined, "the grant is stripped before the call leaves");
    await k.kernel.stop();
    const db = new Database(k.kernel.options.databasePath, { readonly: true });
    t.teardown(() => db.close());
    const actions = db.prepare("SELECT action FROM audit_log WHERE action LIKE 'egress.override.%' ORDER BY seq").all();
    t.deepEqual(
      (actions as { action: string }[]).map((a) => a.action).sort(),
      ["egress.override.activated", "egress.override.denied", "egress.override.denied"],
      "three refusals of one kind: one row at once, one counted row at the window's end",
    );
  });

  test(`egress whole call - a flood of refusals is coalesced into bounded rows without losing the count (${transport})`, async (t) => {
    // A window longer than the test: the count row is written when the kernel stops.
    const { k, routing } = await kernelWithAgent(t, transport, { eventFlushMs: 60_000 });
    const N = 40;
    for (let i = 0; i < N; i++) {
      await t.throwsAsync(
        routing.invoke({
          tenant: "globex",
          capability: "echo",
          payload: text(`ssn ${SSN}`),
          contentType: "text/plain",
        }),
      );
    }
    t.is(blockedEvents(k).length, 1, "the first refusal is written at once");
    await k.kernel.stop();
    const events = blockedEvents(k);
    t.deepEqual(
      events.map((e) => e.count),
      [1, N - 1],
    );
    const db = new Database(k.kernel.options.databasePath, { readonly: true });
    t.teardown(() => db.close());
    const audit = (
      db.prepare("SELECT details FROM audit_log WHERE action = 'egress.blocked' ORDER BY seq").all() as {
        details: string;
      }[]
    ).map((a) => JSON.parse(a.details) as { count: number; reason: string });
    t.deepEqual(
      audit.map((a) => [a.reason, a.count]),
      [
        ["pii_blocked_tier3", 1],
        ["pii_blocked_tier3", N - 1],
      ],
    );
  });
}

test("egress whole call - NATS: PII in an event's subject holds it at the edge; the record names only the stream (both transports)", async (t) => {
  const topo = await startNatsTopology({ edgeDomain: "edge-w" });
  t.teardown(() => topo.destroy());
  const k = await startTestKernel(t, {
    edgeId: "edge-w",
    nats: { url: topo.leaf.url },
    events: {
      natsUser: topo.kernelUser.user,
      natsPassword: topo.kernelUser.pass,
      edgeDomain: topo.edgeDomain,
      confirmIntervalMs: 200,
    },
    egress: { tenantTiers: { globex: 3 }, dgeTimeoutMs: 30_000 },
  });
  const ids: bigint[] = [];
  for (const transport of BOTH) {
    const bus = k.client(EventBusService, transport);
    const { outboxId } = await bus.publish({
      tenant: "globex",
      subject: `customers.${SSN}.updated`,
      payload: text('{"status":"ok"}'),
    });
    ids.push(outboxId);
  }
  const db = new Database(k.kernel.options.databasePath, { readonly: true });
  t.teardown(() => db.close());
  const held = () =>
    (db.prepare("SELECT outbox_id FROM outbox_blocked").all() as { outbox_id: number }[]).map((r) => r.outbox_id);
  await waitFor(() => held().length === 2, "both events to be held at the edge", 60_000);
  t.deepEqual(held().sort(), ids.map(Number).sort());
  await k.kernel.stop();
  const events = blockedEvents(k).filter((e) => e.decision?.tenant === "globex");
  t.true(events.length >= 1);
  for (const e of events) t.deepEqual([e.decision?.destination, e.decision?.dataType], ["nops.events.globex", "event"]);
  // The held events themselves stay in the outbox as evidence; nothing else carries the value.
  const reopened = new Database(k.kernel.options.databasePath, { readonly: true });
  const others = reopened
    .prepare("SELECT * FROM outbox WHERE id NOT IN (SELECT outbox_id FROM outbox_blocked)")
    .all() as Record<string, unknown>[];
  const audit = reopened.prepare("SELECT * FROM audit_log").all();
  reopened.close();
  const all = [
    ...others.flatMap((r) =>
      Object.values(r).map((v) => (v instanceof Uint8Array ? Buffer.from(v).toString("latin1") : String(v))),
    ),
    JSON.stringify(audit),
    ...k.logs,
  ].join("\n");
  t.false(
    all.includes(SSN),
    all
      .split("\n")
      .filter((l) => l.includes(SSN))
      .join("\n"),
  );
});
