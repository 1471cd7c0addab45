import { Origin } from "../../gen/nops/events/v1/envelope_pb.js";
import test from "ava";
import { fromBinary } from "@bufbuild/protobuf";
import { EventEnvelopeSchema } from "../../gen/nops/events/v1/envelope_pb.js";
import { openDatabase } from "../../src/store/database.js";
import { migrateUp } from "../../src/store/migrator.js";
import { MIGRATIONS } from "../../src/store/migrations/index.js";
import {
  createInMemoryOutboxStore,
  createSqliteOutboxStore,
  type OutboxEntry,
  type OutboxStore,
} from "../../src/store/outbox-store.js";
import { createInMemoryTransactor, createSqliteTransactor, type Transactor } from "../../src/store/transactor.js";

// Every behaviour is checked on both stores, so the in-memory one used by unit tests cannot drift from SQLite.
const kinds: Record<string, () => { store: OutboxStore; tx: Transactor }> = {
  sqlite: () => {
    const db = openDatabase({ path: ":memory:" });
    migrateUp(db, MIGRATIONS);
    return { store: createSqliteOutboxStore(db), tx: createSqliteTransactor(db) };
  },
  memory: () => {
    const tx = createInMemoryTransactor();
    return { store: createInMemoryOutboxStore({ transactor: tx }), tx };
  },
};

const entry = (over: Partial<OutboxEntry> = {}): OutboxEntry => ({
  type: "agent.registered.v1",
  tenant: "acme",
  source: "edge-1",
  occurredAt: 1000,
  origin: Origin.KERNEL,
  payloadType: "nops.events.v1.AgentRegistered",
  payload: new Uint8Array([1, 2, 3]),
  ...over,
});

for (const [kind, make] of Object.entries(kinds)) {
  test(`outbox store (${kind}) - append writes the envelope and the subject`, (t) => {
    const { store } = make();
    const a = store.append(entry({ traceparent: "00-abc-def-01", correlationId: "c1", headers: { "X-A": "1" } }));
    t.is(a.subject, "nops.events.acme.agent.registered.v1");
    const [row] = store.unpublished(0, 10);
    t.is(row?.id, a.id);
    t.deepEqual(row?.headers, { "X-A": "1" });
    const env = fromBinary(EventEnvelopeSchema, row!.envelope);
    t.is(env.id, a.eventId);
    t.is(env.source, "edge-1");
    t.is(env.tenant, "acme");
    t.is(env.traceparent, "00-abc-def-01");
    t.is(env.correlationId, "c1");
    t.is(Number(env.occurredAt?.seconds), 1);
    t.deepEqual([...env.payload], [1, 2, 3]);
  });

  test(`outbox store (${kind}) - a rolled back transaction leaves no row, a committed one does`, (t) => {
    const { store, tx } = make();
    t.throws(() =>
      tx.transaction(() => {
        store.append(entry());
        throw new Error("state change failed");
      }),
    );
    t.is(store.depth(), 0);
    tx.transaction(() => {
      store.append(entry());
      // A failed savepoint rolls back only its own row.
      t.throws(() =>
        tx.transaction(() => {
          store.append(entry());
          throw new Error("inner");
        }),
      );
    });
    t.is(store.depth(), 1);
    t.throws(() => tx.transaction(() => Promise.resolve()), { instanceOf: TypeError });
  });

  test(`outbox store (${kind}) - published, blocked, confirmed and pruned rows`, (t) => {
    const { store } = make();
    const ids = [1, 2, 3, 4].map((i) => store.append(entry({ occurredAt: 1000 * i })).id);
    const [a, b, c, d] = ids as [number, number, number, number];
    t.is(store.oldestUnpublishedAt(), 1000);
    store.block(b, "pii", 5000);
    t.deepEqual(
      store.unpublished(0, 10).map((r) => r.id),
      [a, c, d],
    );
    t.deepEqual(
      store.unpublished(a, 1).map((r) => r.id),
      [c],
    );
    t.deepEqual(store.listBlocked(10), [
      { outboxId: b, subject: "nops.events.acme.agent.registered.v1", reason: "pii", blockedAt: 5000 },
    ]);
    store.recordPublished(
      [
        { outboxId: a, streamSeq: 1 },
        { outboxId: c, streamSeq: 2 },
      ],
      6000,
    );
    t.is(store.depth(), 1);
    t.is(store.oldestUnpublishedAt(), 4000);
    // The leaf lost everything above seq 1: c is published again.
    t.is(store.unpublishAbove(1), 1);
    t.deepEqual(
      store.unpublished(0, 10).map((r) => r.id),
      [c, d],
    );
    store.confirmUpTo(5, 7000);
    // Confirmed rows are kept until pruned, and never come back on a stream reset.
    t.is(store.unpublishAbove(0), 0);
    store.pruneConfirmed(6999);
    t.is(store.depth(), 2);
    store.pruneConfirmed(7000);
    t.true(store.releaseBlocked(b));
    t.false(store.releaseBlocked(b));
    t.deepEqual(
      store.unpublished(0, 10).map((r) => r.id),
      [b, c, d],
    );
    t.deepEqual(store.listBlocked(10), []);
    store.recordPublished(
      [
        { outboxId: b, streamSeq: 3 },
        { outboxId: c, streamSeq: 4 },
        { outboxId: d, streamSeq: 5 },
      ],
      8000,
    );
    t.is(store.depth(), 0);
    t.is(store.oldestUnpublishedAt(), undefined);
    // Ids are never reused, even after pruning.
    t.true(store.append(entry()).id > d);
  });
}

test("outbox store (sqlite) - PubAck receipts commit without fsync and restore synchronous=FULL", (t) => {
  const db = openDatabase({ path: ":memory:" });
  migrateUp(db, MIGRATIONS);
  const store = createSqliteOutboxStore(db);
  const { id } = store.append(entry());
  store.recordPublished([{ outboxId: id, streamSeq: 1 }], 2000);
  t.is(db.pragma("synchronous", { simple: true }), 2, "FULL again after the receipt transaction");
  t.is(store.depth(), 0);
});
