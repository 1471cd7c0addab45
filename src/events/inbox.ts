import type { Db } from "../store/index.js";
import type { Clock } from "../common/index.js";

/** Exactly-once application of events for consumers that change SQLite state. */
export interface Inbox {
  /**
   * Runs `apply` and records (consumer, eventId) in one transaction; returns false without
   * running it when the event was already applied (a redelivery or a reprocessed dead letter).
   */
  applyOnce(consumer: string, eventId: string, apply: () => void): boolean;
  /** Deletes inbox rows older than the retention; returns how many. */
  sweep(): number;
}

/** Creates the SQLite inbox (table event_inbox). */
export function createInbox(deps: { db: Db; clock: Clock }, options: { retentionMs: number }): Inbox {
  const { db, clock } = deps;
  const insert = db.prepare("INSERT OR IGNORE INTO event_inbox (consumer, event_id, applied_at) VALUES (?, ?, ?)");
  const del = db.prepare("DELETE FROM event_inbox WHERE applied_at <= ?");
  const tx = db.transaction((consumer: string, eventId: string, apply: () => void): boolean => {
    if (insert.run(consumer, eventId, clock.now()).changes === 0) return false;
    apply();
    return true;
  });
  return {
    applyOnce: (consumer, eventId, apply) => tx(consumer, eventId, apply),
    sweep: () => del.run(clock.now() - options.retentionMs).changes,
  };
}
