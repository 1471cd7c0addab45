import type { AppendedEvent, OutboxEntry, OutboxStore, Transactor } from "../store/index.js";
import type { IdempotencyStore, IdempotentResult } from "./idempotency-store.js";

/** One Publish to store: its outbox row, and its idempotency key (empty for none) with the request's hash. */
export interface PublishWrite {
  entry: OutboxEntry;
  idempotencyKey: string;
  requestHash: string;
}

/** What storing one Publish came to. Plain data: it crosses from the writer thread by structured clone. */
export type PublishWriteResult =
  | { kind: "appended"; event: AppendedEvent }
  /** The key was used before for the same request: its first result. */
  | { kind: "duplicate"; prior: IdempotentResult }
  /** The key was used before for a different request. */
  | { kind: "conflict" }
  /** This one write failed (its savepoint rolled back); the others in the batch stand. */
  | { kind: "failed"; message: string };

/** The stores one batch writes to, on one connection. */
export interface PublishBatchStores {
  outbox: OutboxStore;
  idempotency: IdempotencyStore;
  transactor: Transactor;
}

/**
 * Stores a batch of Publish calls in one transaction (group commit: one fsync for all of them), a savepoint
 * per call so one failure does not roll back the others. Throws when the commit itself fails: then none of
 * them is stored.
 */
export function writePublishBatch(stores: PublishBatchStores, batch: readonly PublishWrite[]): PublishWriteResult[] {
  const { outbox, idempotency, transactor } = stores;
  const writeOne = (w: PublishWrite): PublishWriteResult => {
    const { tenant } = w.entry;
    if (w.idempotencyKey !== "") {
      const prior = idempotency.get(tenant, w.idempotencyKey);
      if (prior) return prior.requestHash === w.requestHash ? { kind: "duplicate", prior } : { kind: "conflict" };
    }
    const event = outbox.append(w.entry);
    if (w.idempotencyKey !== "") {
      const { id: outboxId, eventId, subject } = event;
      idempotency.put(tenant, w.idempotencyKey, { requestHash: w.requestHash, outboxId, eventId, subject });
    }
    return { kind: "appended", event };
  };
  return transactor.transaction(() =>
    batch.map((w) => {
      try {
        return transactor.transaction(() => writeOne(w));
      } catch (err) {
        return { kind: "failed", message: err instanceof Error ? err.message : String(err) };
      }
    }),
  );
}
