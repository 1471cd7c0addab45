import type { Db } from "../store/index.js";
import type { Clock } from "../common/index.js";

/** The first result recorded under an idempotency key. */
export interface IdempotentResult {
  requestHash: string;
  outboxId: number;
  eventId: string;
  subject: string;
}

/** Publish idempotency keys in SQLite, scoped per tenant, each with an expiry. */
export interface IdempotencyStore {
  /** The unexpired result for (tenant, key), if any. Call inside the writing transaction. */
  get(tenant: string, key: string): IdempotentResult | undefined;
  /** Records the first result (replacing an expired one). Call inside the writing transaction. */
  put(tenant: string, key: string, result: IdempotentResult): void;
  /** Deletes expired keys; returns how many. */
  sweep(): number;
}

/** Creates the SQLite idempotency store. */
export function createIdempotencyStore(
  deps: { db: Db; clock: Pick<Clock, "now"> },
  options: { ttlMs: number },
): IdempotencyStore {
  const { db, clock } = deps;
  const select = db.prepare(
    "SELECT request_hash AS requestHash, outbox_id AS outboxId, event_id AS eventId, subject FROM event_idempotency WHERE tenant = ? AND key = ? AND expires_at > ?",
  );
  const upsert = db.prepare(
    `INSERT INTO event_idempotency (tenant, key, request_hash, outbox_id, event_id, subject, created_at, expires_at)
     VALUES (?, ?, ?, ?, ?, ?, ?, ?)
     ON CONFLICT (tenant, key) DO UPDATE SET request_hash = excluded.request_hash, outbox_id = excluded.outbox_id,
       event_id = excluded.event_id, subject = excluded.subject, created_at = excluded.created_at, expires_at = excluded.expires_at`,
  );
  const del = db.prepare("DELETE FROM event_idempotency WHERE expires_at <= ?");
  return {
    get: (tenant, key) => select.get(tenant, key, clock.now()) as IdempotentResult | undefined,
    put(tenant, key, r) {
      const now = clock.now();
      upsert.run(tenant, key, r.requestHash, r.outboxId, r.eventId, r.subject, now, now + options.ttlMs);
    },
    sweep: () => del.run(clock.now()).changes,
  };
}
