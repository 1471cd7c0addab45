import test, { type ExecutionContext } from "ava";
import { create, fromBinary } from "@bufbuild/protobuf";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import { startNatsTopology, waitFor, type NatsTopology } from "../helpers/nats-servers.js";
import { startEdgePipeline, tempDbPath, type EdgePipeline } from "./edge-pipeline.js";
import { readStreamEnvelopes } from "./hub-reader.js";
import { EventEnvelopeSchema } from "../../gen/nops/events/v1/envelope_pb.js";
import {
  AckAction,
  AckRequestSchema,
  DeadLetterReason,
  ListDeadLettersRequestSchema,
  ReprocessRequestSchema,
  SubscribeRequestSchema,
  type DeliveredMessage,
  type ListDeadLettersResponse,
  type ReprocessResponse,
  type SubscribeResponse,
} from "../../gen/nops/kernel/v1/event_bus_pb.js";
import type { PrePublishHook } from "../../src/events/outbox-relay.js";

let topo: NatsTopology;
let p: EdgePipeline;
const blockedSubjects = new Set<string>();
const prePublish: PrePublishHook = async (subject) =>
  blockedSubjects.has(subject) ? { allowed: false, reason: "contains personal data" } : { allowed: true };

test.before(async () => {
  topo = await startNatsTopology({ edgeDomain: "edge2" });
  p = startEdgePipeline({
    dbPath: tempDbPath(),
    natsUrl: topo.leaf.url,
    user: topo.kernelUser.user,
    pass: topo.kernelUser.pass,
    edgeId: "edge2",
    edgeDomain: "edge2",
    prePublish,
  });
  await waitFor(() => p.bus.jetstream() !== undefined, "bus connected", 60_000);
});
test.after.always(async () => {
  await p?.close();
  await topo?.destroy();
});

async function rpcError(t: ExecutionContext, fn: () => Promise<unknown>, code: Code, field?: RegExp): Promise<void> {
  const err = await t.throwsAsync(fn);
  t.true(err instanceof ConnectError, String(err));
  t.is((err as ConnectError).code, code, (err as ConnectError).message);
  if (field) t.regex((err as ConnectError).message, field);
}

async function take(iter: AsyncIterator<unknown>, n: number, timeoutMs = 60_000): Promise<DeliveredMessage[]> {
  const out: DeliveredMessage[] = [];
  const deadline = Date.now() + timeoutMs;
  while (out.length < n) {
    if (Date.now() > deadline) throw new Error(`only ${out.length} of ${n} messages before the deadline`);
    const r = await iter.next();
    if (r.done) break;
    const msg = (r.value as SubscribeResponse).message;
    if (msg) out.push(msg);
  }
  return out;
}

test.serial("EventBusService - same idempotency key twice records one event", async (t) => {
  const a = await p.publish({
    tenant: "acme",
    subject: "orders.paid.v1",
    payload: new Uint8Array([1]),
    idempotencyKey: "order-42",
  });
  const b = await p.publish({
    tenant: "acme",
    subject: "orders.paid.v1",
    payload: new Uint8Array([1]),
    idempotencyKey: "order-42",
  });
  t.false(a.duplicate);
  t.true(b.duplicate);
  t.is(b.eventId, a.eventId);
  t.is(b.outboxId, a.outboxId);
  const rows = p.db
    .prepare("SELECT count(*) AS n FROM outbox WHERE tenant = 'acme' AND type = 'orders.paid.v1'")
    .get() as { n: number };
  t.is(rows.n, 1);
  // The key is per tenant: another tenant's identical key is its own event.
  const other = await p.publish({
    tenant: "globex",
    subject: "orders.paid.v1",
    payload: new Uint8Array([1]),
    idempotencyKey: "order-42",
  });
  t.not(other.eventId, a.eventId);
  // Reused with a different request: refused rather than silently answered with the first result.
  await rpcError(
    t,
    () =>
      p.publish({
        tenant: "acme",
        subject: "orders.paid.v1",
        payload: new Uint8Array([2]),
        idempotencyKey: "order-42",
      }),
    Code.FailedPrecondition,
  );
  // Concurrent retries in one commit batch also collapse to one event.
  const [c, d] = await Promise.all([
    p.publish({ tenant: "acme", subject: "orders.paid.v1", idempotencyKey: "order-43" }),
    p.publish({ tenant: "acme", subject: "orders.paid.v1", idempotencyKey: "order-43" }),
  ]);
  t.is(c.eventId, d.eventId);
  await waitFor(() => p.bus.relay.depth() === 0, "relay drained");
  const leaf = await readStreamEnvelopes(topo.leaf.url, topo.kernelUser, "NOPS_EVENTS");
  t.is(leaf.filter((e) => e.id === a.eventId).length, 1);
});

test.serial("EventBusService - invalid input is InvalidArgument naming the field", async (t) => {
  await rpcError(t, () => p.publish({ tenant: "Bad Tenant", subject: "x.v1" }), Code.InvalidArgument, /tenant/);
  await rpcError(t, () => p.publish({ tenant: "acme", subject: "" }), Code.InvalidArgument, /subject/);
  await rpcError(t, () => p.publish({ tenant: "acme", subject: "orders.>" }), Code.InvalidArgument, /subject/);
  await rpcError(
    t,
    () => p.publish({ tenant: "acme", subject: "a.v1", headers: { "Nats-Msg-Id": "x" } }),
    Code.InvalidArgument,
    /headers/,
  );
  await rpcError(
    t,
    () => p.publish({ tenant: "acme", subject: "a.v1", payload: new Uint8Array(800 * 1024) }),
    Code.InvalidArgument,
    /payload/,
  );
  await rpcError(
    t,
    () => p.publish({ tenant: "acme", subject: "a.v1", idempotencyKey: "has space" }),
    Code.InvalidArgument,
    /idempotency_key/,
  );
  const sub = p.service.subscribe(
    create(SubscribeRequestSchema, { tenant: "acme", consumer: "bad-name" }),
    p.context(),
  );
  await rpcError(t, () => sub[Symbol.asyncIterator]().next(), Code.InvalidArgument, /consumer/);
  const sub2 = p.service.subscribe(
    create(SubscribeRequestSchema, {
      tenant: "acme",
      consumer: "c",
      maxDeliveries: 2,
      backoff: [durationFromMs(10), durationFromMs(10)],
    }),
    p.context(),
  );
  await rpcError(t, () => sub2[Symbol.asyncIterator]().next(), Code.InvalidArgument, /backoff/);
  await rpcError(
    t,
    async () =>
      p.service.ack(
        create(AckRequestSchema, { tenant: "acme", consumer: "c", ackToken: "$JS.ACK.OTHER.x.1.1.1.1.0" }),
        p.context(),
      ),
    Code.InvalidArgument,
    /ack_token/,
  );
  await rpcError(
    t,
    async () => p.service.reprocess(create(ReprocessRequestSchema, { tenant: "acme" }), p.context()),
    Code.InvalidArgument,
    /dead_letter_id/,
  );
});

test.serial("EventBusService - subscribe delivers with explicit acks and ends when the caller aborts", async (t) => {
  const sent = await p.publish({
    tenant: "acme",
    subject: "invoices.issued.v1",
    payload: new TextEncoder().encode("inv-1"),
    headers: { "X-Trace": "abc" },
  });
  const ctrl = new AbortController();
  const stream = p.service.subscribe(
    create(SubscribeRequestSchema, { tenant: "acme", consumer: "billing", filter: "invoices.>" }),
    p.context(ctrl.signal),
  );
  const iter = stream[Symbol.asyncIterator]();
  const [m] = await take(iter, 1);
  t.truthy(m);
  if (!m) return;
  t.is(m.subject, "invoices.issued.v1");
  t.is(m.eventId, sent.eventId);
  t.is(m.headers["X-Trace"], "abc");
  t.is(new TextDecoder().decode(fromBinary(EventEnvelopeSchema, m.envelope).payload), "inv-1");
  await p.service.ack(
    create(AckRequestSchema, { tenant: "acme", consumer: "billing", ackToken: m.ackToken, action: AckAction.ACK }),
    p.context(),
  );
  // Another tenant cannot ack with this token.
  await rpcError(
    t,
    async () =>
      p.service.ack(
        create(AckRequestSchema, { tenant: "globex", consumer: "billing", ackToken: m.ackToken }),
        p.context(),
      ),
    Code.InvalidArgument,
    /ack_token/,
  );
  ctrl.abort();
  const end = await Promise.race([iter.next(), new Promise<"timeout">((r) => setTimeout(() => r("timeout"), 30_000))]);
  t.not(end, "timeout");
  t.true(end !== "timeout" && end.done === true);
  const info = await p.bus.jetstreamManager()?.consumers.info("NOPS_EVENTS", "acme--billing");
  t.is(info?.num_ack_pending, 0);
});

test.serial(
  "EventBusService - a consumer that always fails dead-letters after max deliveries; Reprocess delivers it again",
  async (t) => {
    const sent = await p.publish({
      tenant: "acme",
      subject: "jobs.poison.v1",
      payload: new TextEncoder().encode("poison"),
    });
    const ctrl = new AbortController();
    t.teardown(() => ctrl.abort());
    const stream = p.service.subscribe(
      create(SubscribeRequestSchema, {
        tenant: "acme",
        consumer: "worker",
        filter: "jobs.>",
        maxDeliveries: 3,
        ackWait: durationFromMs(2000),
        backoff: [durationFromMs(50), durationFromMs(100)],
      }),
      p.context(ctrl.signal),
    );
    const iter = stream[Symbol.asyncIterator]();
    const deliveries = await take(iter, 3);
    for (const d of deliveries) {
      t.is(d.eventId, sent.eventId);
      await p.service.ack(
        create(AckRequestSchema, { tenant: "acme", consumer: "worker", ackToken: d.ackToken, action: AckAction.NAK }),
        p.context(),
      );
    }
    t.deepEqual(
      deliveries.map((d) => d.deliveryCount),
      [1, 2, 3],
    );
    let page: ListDeadLettersResponse | undefined;
    await waitFor(
      async () => {
        page = (await p.service.listDeadLetters(
          create(ListDeadLettersRequestSchema, { tenant: "acme", consumer: "worker" }),
          p.context(),
        )) as ListDeadLettersResponse;
        return page.deadLetters.length === 1;
      },
      "dead letter to appear",
      60_000,
      200,
    );
    const dl = page?.deadLetters[0];
    t.truthy(dl);
    if (!dl) return;
    t.is(dl.reason, DeadLetterReason.MAX_DELIVERIES);
    t.is(dl.consumer, "worker");
    t.is(dl.subject, "jobs.poison.v1");
    t.is(dl.deliveries, 3);
    t.is(fromBinary(EventEnvelopeSchema, dl.envelope).id, sent.eventId);
    // Other tenants see nothing of it.
    const other = (await p.service.listDeadLetters(
      create(ListDeadLettersRequestSchema, { tenant: "globex" }),
      p.context(),
    )) as ListDeadLettersResponse;
    t.is(other.deadLetters.length, 0);
    await rpcError(
      t,
      async () =>
        p.service.reprocess(
          create(ReprocessRequestSchema, { tenant: "globex", deadLetterId: dl.deadLetterId }),
          p.context(),
        ),
      Code.NotFound,
    );

    const rep = (await p.service.reprocess(
      create(ReprocessRequestSchema, { tenant: "acme", deadLetterId: dl.deadLetterId }),
      p.context(),
    )) as ReprocessResponse;
    t.is(rep.messageId, `edge2:dlq:${dl.deadLetterId}`);
    const [again] = await take(iter, 1);
    t.is(again?.eventId, sent.eventId);
    t.is(again?.deliveryCount, 1);
    if (again)
      await p.service.ack(
        create(AckRequestSchema, {
          tenant: "acme",
          consumer: "worker",
          ackToken: again.ackToken,
          action: AckAction.ACK,
        }),
        p.context(),
      );
    const after = (await p.service.listDeadLetters(
      create(ListDeadLettersRequestSchema, { tenant: "acme" }),
      p.context(),
    )) as ListDeadLettersResponse;
    t.is(after.deadLetters.length, 0);
  },
);

test.serial("EventBusService - a terminated message lands in the DLQ", async (t) => {
  await p.publish({ tenant: "acme", subject: "mail.bounce.v1", payload: new TextEncoder().encode("x") });
  const ctrl = new AbortController();
  t.teardown(() => ctrl.abort());
  const stream = p.service.subscribe(
    create(SubscribeRequestSchema, { tenant: "acme", consumer: "mailer", filter: "mail.>" }),
    p.context(ctrl.signal),
  );
  const iter = stream[Symbol.asyncIterator]();
  const [m] = await take(iter, 1);
  if (!m) return t.fail("no delivery");
  await p.service.ack(
    create(AckRequestSchema, { tenant: "acme", consumer: "mailer", ackToken: m.ackToken, action: AckAction.TERM }),
    p.context(),
  );
  await waitFor(
    async () => {
      const page = (await p.service.listDeadLetters(
        create(ListDeadLettersRequestSchema, { tenant: "acme", consumer: "mailer" }),
        p.context(),
      )) as ListDeadLettersResponse;
      return page.deadLetters.some((d) => d.reason === DeadLetterReason.TERMINATED && d.subject === "mail.bounce.v1");
    },
    "terminated message in the DLQ",
    60_000,
    200,
  );
  t.pass();
});

test.serial("event bus - an event the egress guard blocks is kept and listed, never published", async (t) => {
  blockedSubjects.add("nops.events.acme.pii.leak.v1");
  const r = await p.publish({ tenant: "acme", subject: "pii.leak.v1", payload: new TextEncoder().encode("ssn") });
  const after = await p.publish({ tenant: "acme", subject: "pii.ok.v1" });
  await waitFor(() => p.bus.relay.listBlocked().some((b) => b.outboxId === Number(r.outboxId)), "row blocked");
  await waitFor(() => p.bus.relay.depth() === 0, "the rest relayed");
  const blocked = p.bus.relay.listBlocked().find((b) => b.outboxId === Number(r.outboxId));
  t.is(blocked?.reason, "contains personal data");
  const leaf = await readStreamEnvelopes(topo.leaf.url, topo.kernelUser, "NOPS_EVENTS");
  t.false(leaf.some((e) => e.id === r.eventId));
  t.true(leaf.some((e) => e.id === after.eventId));
  const row = p.db.prepare("SELECT published_at FROM outbox WHERE id = ?").get(Number(r.outboxId)) as {
    published_at: number | null;
  };
  t.is(row.published_at, null);
  // Released after the policy changed: published then.
  blockedSubjects.delete("nops.events.acme.pii.leak.v1");
  t.true(p.bus.relay.releaseBlocked(Number(r.outboxId)));
  await waitFor(
    async () =>
      (await readStreamEnvelopes(topo.leaf.url, topo.kernelUser, "NOPS_EVENTS")).some((e) => e.id === r.eventId),
    "released row published",
  );
});
