import { randomUUID } from "node:crypto";
import { create, toBinary } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import type { Db } from "./database.js";
import type { InMemoryTransactor } from "./transactor.js";
import { EventEnvelopeSchema, type Origin } from "../../gen/nops/events/v1/envelope_pb.js";

/** An event to write to the outbox: the envelope's fields, its payload already encoded. */
export interface OutboxEntry {
  /** Versioned event type, e.g. "agent.registered.v1"; also the last part of the subject. */
  type: string;
  tenant: string;
  /** The edge's id (the envelope's source). */
  source: string;
  /** Milliseconds since the epoch: the envelope's occurred_at and the row's created_at. */
  occurredAt: number;
  /** Full protobuf type name of `payload`. */
  payloadType: string;
  payload: Uint8Array;
  traceparent?: string;
  correlationId?: string;
  /** NATS headers published with the event (EventBusService.Publish). */
  headers?: Record<string, string>;
  /** Who wrote it: the kernel, or a caller through Publish (the guard exempts only the kernel's records). */
  origin: Origin;
}

/** What the outbox assigned to an appended event. */
export interface AppendedEvent {
  /** Outbox row id: monotonically increasing, part of the NATS message id. */
  id: number;
  eventId: string;
  subject: string;
}

/** An outbox row waiting for the leaf stream's PubAck. */
export interface UnpublishedRow {
  id: number;
  subject: string;
  /** Encoded nops.events.v1.EventEnvelope. */
  envelope: Uint8Array;
  createdAt: number;
  headers: Record<string, string>;
}

/** A row the leaf stream acknowledged. */
export interface PublicationReceipt {
  outboxId: number;
  /** Sequence in the edge stream (from the PubAck). */
  streamSeq: number;
}

/** A row the egress guard refused to let cross to the hub. */
export interface BlockedRow {
  outboxId: number;
  subject: string;
  reason: string;
  blockedAt: number;
}

/**
 * The outbox: the one place that writes outbox rows and their envelopes, and tracks each row
 * through published (leaf PubAck), blocked (egress guard) and confirmed (the hub holds it).
 * Writers call `append` inside a Transactor transaction, so the row commits or rolls back with
 * the change it reports.
 */
export interface OutboxStore {
  append(entry: OutboxEntry): AppendedEvent;
  /** Unpublished, unblocked rows with id > afterId, in id order. */
  unpublished(afterId: number, limit: number): UnpublishedRow[];
  /**
   * Records PubAcks. Receipts are re-derivable (a lost one means a republish the stream's
   * duplicate window drops), so the SQLite store commits them without a WAL fsync.
   */
  recordPublished(receipts: readonly PublicationReceipt[], now: number): void;
  block(outboxId: number, reason: string, now: number): void;
  listBlocked(limit: number): BlockedRow[];
  /** Lets a blocked row be published again; false when it was not blocked. */
  releaseBlocked(outboxId: number): boolean;
  /** Rows not yet acknowledged by the leaf stream (blocked rows excluded). */
  depth(): number;
  /** created_at of the oldest row counted by depth(), undefined when there is none. */
  oldestUnpublishedAt(): number | undefined;
  /** Forgets unconfirmed receipts above `streamSeq` so those rows are published again; returns how many. */
  unpublishAbove(streamSeq: number): number;
  /** Marks published rows whose receipt is at or below `streamSeq` as confirmed at `now`. */
  confirmUpTo(streamSeq: number, now: number): void;
  /** Deletes rows (and their receipts and headers) confirmed at or before `before`. */
  pruneConfirmed(before: number): void;
}

/** NATS subject for an event: `nops.events.<tenant>.<type>` (tenant ids are subject-safe by validation). */
export function eventSubject(tenant: string, type: string): string {
  return `nops.events.${tenant}.${type}`;
}

function encodeEnvelope(entry: OutboxEntry, eventId: string): Uint8Array {
  const envelope = create(EventEnvelopeSchema, {
    id: eventId,
    type: entry.type,
    source: entry.source,
    tenant: entry.tenant,
    occurredAt: timestampFromMs(entry.occurredAt),
    payloadType: entry.payloadType,
    payload: entry.payload,
    traceparent: entry.traceparent ?? "",
    correlationId: entry.correlationId ?? "",
    origin: entry.origin,
  });
  return toBinary(EventEnvelopeSchema, envelope);
}

const hasHeaders = (h: Record<string, string> | undefined): h is Record<string, string> =>
  h !== undefined && Object.keys(h).length > 0;

/** Creates the SQLite outbox (tables of migrations 0001 and 0004). */
export function createSqliteOutboxStore(db: Db): OutboxStore {
  const insert = db.prepare(
    "INSERT INTO outbox (event_id, type, tenant, subject, envelope, created_at) VALUES (?, ?, ?, ?, ?, ?)",
  );
  const insertHeaders = db.prepare("INSERT INTO outbox_headers (outbox_id, headers) VALUES (?, ?)");
  const selectRows = db.prepare(
    `SELECT o.id, o.subject, o.envelope, o.created_at AS createdAt, h.headers FROM outbox o
       LEFT JOIN outbox_headers h ON h.outbox_id = o.id
      WHERE o.published_at IS NULL AND o.id > ?
        AND NOT EXISTS (SELECT 1 FROM outbox_blocked b WHERE b.outbox_id = o.id)
      ORDER BY o.id LIMIT ?`,
  );
  const insertReceipt = db.prepare(
    "INSERT OR REPLACE INTO outbox_publications (outbox_id, stream_seq, published_at) VALUES (?, ?, ?)",
  );
  const markPublished = db.prepare("UPDATE outbox SET published_at = ? WHERE id = ? AND published_at IS NULL");
  const insertBlocked = db.prepare(
    "INSERT OR REPLACE INTO outbox_blocked (outbox_id, reason, blocked_at) VALUES (?, ?, ?)",
  );
  const countDepth = db.prepare(
    "SELECT count(*) AS n FROM outbox o WHERE o.published_at IS NULL AND NOT EXISTS (SELECT 1 FROM outbox_blocked b WHERE b.outbox_id = o.id)",
  );
  const oldestUnpublished = db.prepare(
    "SELECT min(created_at) AS t FROM outbox o WHERE o.published_at IS NULL AND NOT EXISTS (SELECT 1 FROM outbox_blocked b WHERE b.outbox_id = o.id)",
  );
  const blockedList = db.prepare(
    `SELECT b.outbox_id AS outboxId, o.subject, b.reason, b.blocked_at AS blockedAt
       FROM outbox_blocked b JOIN outbox o ON o.id = b.outbox_id ORDER BY b.outbox_id LIMIT ?`,
  );
  const deleteBlocked = db.prepare("DELETE FROM outbox_blocked WHERE outbox_id = ?");
  const staleReceipts = db.prepare(
    "SELECT outbox_id AS id FROM outbox_publications p JOIN outbox o ON o.id = p.outbox_id WHERE p.stream_seq > ? AND o.confirmed_at IS NULL",
  );
  const unpublish = db.prepare("UPDATE outbox SET published_at = NULL WHERE id = ?");
  const deleteReceipt = db.prepare("DELETE FROM outbox_publications WHERE outbox_id = ?");
  const markConfirmed = db.prepare(
    `UPDATE outbox SET confirmed_at = ? WHERE confirmed_at IS NULL AND published_at IS NOT NULL
       AND id IN (SELECT outbox_id FROM outbox_publications WHERE stream_seq <= ?)`,
  );
  const recordAcksTx = db.transaction((receipts: readonly PublicationReceipt[], now: number) => {
    for (const r of receipts) {
      insertReceipt.run(r.outboxId, r.streamSeq, now);
      markPublished.run(now, r.outboxId);
    }
  });
  const unpublishTx = db.transaction((ids: number[]) => {
    for (const id of ids) {
      deleteReceipt.run(id);
      unpublish.run(id);
    }
  });
  const pruneTx = db.transaction((before: number) => {
    db.prepare(
      "DELETE FROM outbox_publications WHERE outbox_id IN (SELECT id FROM outbox WHERE confirmed_at <= ?)",
    ).run(before);
    db.prepare("DELETE FROM outbox_headers WHERE outbox_id IN (SELECT id FROM outbox WHERE confirmed_at <= ?)").run(
      before,
    );
    db.prepare("DELETE FROM outbox WHERE confirmed_at <= ?").run(before);
  });

  return {
    append(entry) {
      const eventId = randomUUID();
      const subject = eventSubject(entry.tenant, entry.type);
      const info = insert.run(
        eventId,
        entry.type,
        entry.tenant,
        subject,
        encodeEnvelope(entry, eventId),
        entry.occurredAt,
      );
      const id = Number(info.lastInsertRowid);
      if (hasHeaders(entry.headers)) insertHeaders.run(id, JSON.stringify(entry.headers));
      return { id, eventId, subject };
    },
    unpublished(afterId, limit) {
      const rows = selectRows.all(afterId, limit) as {
        id: number;
        subject: string;
        envelope: Buffer;
        createdAt: number;
        headers: string | null;
      }[];
      return rows.map((r) => ({
        id: r.id,
        subject: r.subject,
        envelope: r.envelope,
        createdAt: r.createdAt,
        headers: r.headers ? (JSON.parse(r.headers) as Record<string, string>) : {},
      }));
    },
    recordPublished(receipts, now) {
      // synchronous=NORMAL for this transaction only; better-sqlite3 is synchronous, so no other
      // write interleaves, and the next FULL commit of anyone fsyncs these rows too.
      const previous = db.pragma("synchronous", { simple: true }) as number;
      db.pragma("synchronous = NORMAL");
      try {
        recordAcksTx(receipts, now);
      } finally {
        db.pragma(`synchronous = ${previous}`);
      }
    },
    block(outboxId, reason, now) {
      insertBlocked.run(outboxId, reason, now);
    },
    listBlocked: (limit) => blockedList.all(limit) as BlockedRow[],
    releaseBlocked: (outboxId) => deleteBlocked.run(outboxId).changes > 0,
    depth: () => (countDepth.get() as { n: number }).n,
    oldestUnpublishedAt: () => (oldestUnpublished.get() as { t: number | null }).t ?? undefined,
    unpublishAbove(streamSeq) {
      const ids = (staleReceipts.all(streamSeq) as { id: number }[]).map((r) => r.id);
      if (ids.length > 0) unpublishTx(ids);
      return ids.length;
    },
    confirmUpTo(streamSeq, now) {
      markConfirmed.run(now, streamSeq);
    },
    pruneConfirmed(before) {
      pruneTx(before);
    },
  };
}

interface MemoryRow {
  id: number;
  eventId: string;
  subject: string;
  envelope: Uint8Array;
  createdAt: number;
  headers: Record<string, string>;
  publishedAt?: number;
  confirmedAt?: number;
  receipt?: number;
  blocked?: { reason: string; blockedAt: number };
}

/**
 * Creates an in-memory outbox with the SQLite store's behaviour (unit tests). Given the
 * in-memory transactor, its changes roll back with the transaction they were made in.
 */
export function createInMemoryOutboxStore(deps: { transactor?: InMemoryTransactor } = {}): OutboxStore {
  const rows = new Map<number, MemoryRow>();
  let lastId = 0;
  // Each change saves the row's previous fields so a rollback restores them exactly.
  const change = (row: MemoryRow, patch: Partial<MemoryRow>): void => {
    const before = { ...row };
    Object.assign(row, patch);
    deps.transactor?.onRollback(() => {
      for (const k of Object.keys(patch) as (keyof MemoryRow)[]) delete row[k];
      Object.assign(row, before);
    });
  };
  const waiting = (r: MemoryRow) => r.publishedAt === undefined && r.blocked === undefined;
  const sorted = () => [...rows.values()].sort((a, b) => a.id - b.id);

  return {
    append(entry) {
      const eventId = randomUUID();
      const subject = eventSubject(entry.tenant, entry.type);
      const id = ++lastId;
      rows.set(id, {
        id,
        eventId,
        subject,
        envelope: encodeEnvelope(entry, eventId),
        createdAt: entry.occurredAt,
        headers: hasHeaders(entry.headers) ? { ...entry.headers } : {},
      });
      // AUTOINCREMENT never reuses an id, even after a rollback; neither does this.
      deps.transactor?.onRollback(() => rows.delete(id));
      return { id, eventId, subject };
    },
    unpublished(afterId, limit) {
      return sorted()
        .filter((r) => r.id > afterId && waiting(r))
        .slice(0, limit)
        .map((r) => ({
          id: r.id,
          subject: r.subject,
          envelope: r.envelope,
          createdAt: r.createdAt,
          headers: r.headers,
        }));
    },
    recordPublished(receipts, now) {
      for (const { outboxId, streamSeq } of receipts) {
        const row = rows.get(outboxId);
        if (!row) continue;
        change(row, { receipt: streamSeq, publishedAt: row.publishedAt ?? now });
      }
    },
    block(outboxId, reason, now) {
      const row = rows.get(outboxId);
      if (row) change(row, { blocked: { reason, blockedAt: now } });
    },
    listBlocked(limit) {
      return sorted()
        .filter((r) => r.blocked)
        .slice(0, limit)
        .map((r) => ({
          outboxId: r.id,
          subject: r.subject,
          reason: r.blocked!.reason,
          blockedAt: r.blocked!.blockedAt,
        }));
    },
    releaseBlocked(outboxId) {
      const row = rows.get(outboxId);
      if (!row?.blocked) return false;
      change(row, { blocked: undefined });
      return true;
    },
    depth: () => [...rows.values()].filter(waiting).length,
    oldestUnpublishedAt() {
      const times = [...rows.values()].filter(waiting).map((r) => r.createdAt);
      return times.length > 0 ? Math.min(...times) : undefined;
    },
    unpublishAbove(streamSeq) {
      const stale = [...rows.values()].filter(
        (r) => r.receipt !== undefined && r.receipt > streamSeq && r.confirmedAt === undefined,
      );
      for (const row of stale) change(row, { receipt: undefined, publishedAt: undefined });
      return stale.length;
    },
    confirmUpTo(streamSeq, now) {
      for (const row of rows.values()) {
        if (row.confirmedAt === undefined && row.publishedAt !== undefined && (row.receipt ?? Infinity) <= streamSeq)
          change(row, { confirmedAt: now });
      }
    },
    pruneConfirmed(before) {
      for (const row of [...rows.values()]) {
        if (row.confirmedAt !== undefined && row.confirmedAt <= before) {
          rows.delete(row.id);
          deps.transactor?.onRollback(() => rows.set(row.id, row));
        }
      }
    },
  };
}
