import { create, toBinary } from "@bufbuild/protobuf";
import { Origin } from "../../gen/nops/events/v1/envelope_pb.js";
import { AgentHeartbeatSchema } from "../../gen/nops/events/v1/agent_events_pb.js";
import test from "ava";
import type { JetStreamClient } from "@nats-io/jetstream";
import { createNoopMeter } from "@opentelemetry/api";
import { createManualClock } from "../../src/common/clock.js";
import { createOutboxRelay, outboxMessageId } from "../../src/events/outbox-relay.js";
import { createInMemoryOutboxStore, type OutboxEntry } from "../../src/store/outbox-store.js";
import { createSilentLogger } from "../../src/telemetry/logger.js";

const OPTIONS = {
  edgeId: "edge-1",
  maxInFlight: 4,
  batchSize: 10,
  pollIntervalMs: 1000,
  retryInitialMs: 500,
  retryMaxMs: 4000,
  publishTimeoutMs: 1000,
};

const entry = (type: string, headers?: Record<string, string>): OutboxEntry => ({
  type,
  tenant: "acme",
  source: "edge-1",
  occurredAt: 0,
  payloadType: "x",
  payload: new Uint8Array([1]),
  origin: Origin.CALLER,
  headers,
});

/** A JetStream double: records publishes, acknowledges with increasing sequences, or fails while `down`. */
function fakeJetStream() {
  const published: { subject: string; msgID: string; headers: Record<string, string> }[] = [];
  let down = false;
  let seq = 0;
  const js = {
    publish(
      subject: string,
      _data: Uint8Array,
      opts: { msgID: string; headers: { keys(): string[]; get(k: string): string } },
    ) {
      if (down) return Promise.reject(new Error("connection closed"));
      const headers = Object.fromEntries(opts.headers.keys().map((k) => [k, opts.headers.get(k)]));
      published.push({ subject, msgID: opts.msgID, headers });
      return Promise.resolve({ seq: ++seq, stream: "EDGE", duplicate: false });
    },
  };
  return { js: js as unknown as JetStreamClient, published, setDown: (d: boolean) => (down = d) };
}

// Lets the relay's promise chains and setImmediate flushes run, without moving the clock.
async function settle(until: () => boolean, turns = 50): Promise<void> {
  for (let i = 0; i < turns && !until(); i++) await new Promise((r) => setImmediate(r));
}

test("outbox relay - publishes in outbox order with its message ids and headers, holding what the guard blocks", async (t) => {
  const clock = createManualClock(0);
  const outbox = createInMemoryOutboxStore();
  const nats = fakeJetStream();
  const a = outbox.append(entry("a.v1", { "X-Trace": "1" }));
  const b = outbox.append(entry("secret.v1"));
  const c = outbox.append(entry("c.v1"));
  const relay = createOutboxRelay(
    {
      outbox,
      clock,
      logger: createSilentLogger(),
      meter: createNoopMeter(),
      jetstream: () => nats.js,
      prePublish: (subject) =>
        Promise.resolve(subject.endsWith("secret.v1") ? { allowed: false, reason: "pii" } : { allowed: true }),
    },
    OPTIONS,
  );
  relay.start();
  t.teardown(() => relay.stop());
  await settle(() => relay.depth() === 0);
  t.deepEqual(
    nats.published.map((p) => p.msgID),
    [outboxMessageId("edge-1", a.id), outboxMessageId("edge-1", c.id)],
  );
  t.is(nats.published[0]?.headers["X-Trace"], "1");
  t.deepEqual(
    relay.listBlocked().map((r) => [r.outboxId, r.reason]),
    [[b.id, "pii"]],
  );
  t.is(relay.problem(), undefined);
  // A new row waits for the next poll (or a kick) — on the clock, not on wall time.
  const d = outbox.append(entry("d.v1"));
  await settle(() => false, 10);
  t.is(nats.published.length, 2);
  await clock.advanceAsync(OPTIONS.pollIntervalMs);
  await settle(() => relay.depth() === 0);
  t.is(nats.published.at(-1)?.msgID, outboxMessageId("edge-1", d.id));
});

test("outbox relay - a failed publish pauses the relay, which retries after its backoff on the clock", async (t) => {
  const clock = createManualClock(0);
  const outbox = createInMemoryOutboxStore();
  const nats = fakeJetStream();
  outbox.append(entry("a.v1"));
  nats.setDown(true);
  const relay = createOutboxRelay(
    { outbox, clock, logger: createSilentLogger(), meter: createNoopMeter(), jetstream: () => nats.js },
    OPTIONS,
  );
  relay.start();
  t.teardown(() => relay.stop());
  await settle(() => relay.problem() !== undefined);
  t.is(relay.problem()?.kind, "unreachable");
  nats.setDown(false);
  await clock.advanceAsync(OPTIONS.retryInitialMs - 1);
  t.is(relay.depth(), 1, "still paused before the backoff has passed");
  await clock.advanceAsync(1);
  await settle(() => relay.depth() === 0);
  t.is(relay.depth(), 0);
  t.is(nats.published.length, 1);
  t.is(relay.problem(), undefined, "publishing works again: no longer degraded");
});

test("outbox relay - an event the guard has no verdict for waits and is published once the DGE answers", async (t) => {
  const clock = createManualClock(0);
  const outbox = createInMemoryOutboxStore();
  const nats = fakeJetStream();
  const a = outbox.append(entry("a.v1"));
  const b = outbox.append(entry("b.v1"));
  let dgeUp = false;
  const relay = createOutboxRelay(
    {
      outbox,
      clock,
      logger: createSilentLogger(),
      meter: createNoopMeter(),
      jetstream: () => nats.js,
      prePublish: () =>
        Promise.resolve(dgeUp ? { allowed: true } : { allowed: false, reason: "dge_timeout", retryLater: true }),
    },
    OPTIONS,
  );
  relay.start();
  t.teardown(() => relay.stop());
  await settle(() => relay.problem() !== undefined);
  t.is(relay.problem()?.kind, "no-verdict");
  t.deepEqual(relay.listBlocked(), [], "nothing is blocked for good");
  t.is(nats.published.length, 0);
  dgeUp = true;
  await clock.advanceAsync(OPTIONS.retryInitialMs);
  await settle(() => relay.depth() === 0);
  t.deepEqual(
    nats.published.map((p) => p.msgID),
    [outboxMessageId("edge-1", a.id), outboxMessageId("edge-1", b.id)],
    "published in order once a verdict can be had",
  );
  t.is(relay.problem(), undefined);
});

test("outbox relay - refuses (holds as blocked) events whose type has no registered schema, publishes the rest", async (t) => {
  const clock = createManualClock(0);
  const outbox = createInMemoryOutboxStore();
  const nats = fakeJetStream();
  const heartbeat = create(AgentHeartbeatSchema, { agentId: "a-1", tenant: "acme" });
  const kernel = (type: string, payloadType: string, payload: Uint8Array): OutboxEntry => ({
    ...entry(type),
    origin: Origin.KERNEL,
    payloadType,
    payload,
  });
  const ok = outbox.append(
    kernel("agent.heartbeat.v1", AgentHeartbeatSchema.typeName, toBinary(AgentHeartbeatSchema, heartbeat)),
  );
  const unknown = outbox.append(kernel("agent.exploded.v1", AgentHeartbeatSchema.typeName, new Uint8Array()));
  const wrongSchema = outbox.append(kernel("agent.heartbeat.v1", "nops.events.v1.AgentUpdated", new Uint8Array()));
  // Field 1 as a varint claims to be a string: not an AgentHeartbeat.
  const garbage = outbox.append(
    kernel("agent.heartbeat.v1", AgentHeartbeatSchema.typeName, new Uint8Array([0x08, 0x01])),
  );
  const tenantOk = outbox.append({ ...entry("orders.created.v1"), payloadType: "acme.orders.v1.OrderCreated" });
  const tenantUnregistered = outbox.append(entry("orders.deleted.v1"));
  const relay = createOutboxRelay(
    { outbox, clock, logger: createSilentLogger(), meter: createNoopMeter(), jetstream: () => nats.js },
    { ...OPTIONS, schemas: { "orders.created.v1": "acme.orders.v1.OrderCreated" } },
  );
  relay.start();
  t.teardown(() => relay.stop());
  await settle(() => relay.depth() === 0);
  t.deepEqual(
    nats.published.map((p) => p.msgID),
    [outboxMessageId("edge-1", ok.id), outboxMessageId("edge-1", tenantOk.id)],
  );
  const blocked = new Map(relay.listBlocked().map((r) => [r.outboxId, r.reason]));
  t.deepEqual([...blocked.keys()], [unknown.id, wrongSchema.id, garbage.id, tenantUnregistered.id]);
  t.regex(blocked.get(unknown.id)!, /^schema: event type "agent\.exploded\.v1" is not a registered kernel event type/);
  t.regex(blocked.get(wrongSchema.id)!, /carries nops\.events\.v1\.AgentHeartbeat, not nops\.events\.v1\.AgentUpdated/);
  t.regex(
    blocked.get(garbage.id)!,
    /payload of agent\.heartbeat\.v1 does not decode as nops\.events\.v1\.AgentHeartbeat/,
  );
  t.regex(
    blocked.get(tenantUnregistered.id)!,
    /event type "orders\.deleted\.v1" is not registered \(events\.schemas\)/,
  );
});
