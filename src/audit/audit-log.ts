import { createHash } from "node:crypto";
import type { Db } from "../store/index.js";
import type { Clock } from "../common/index.js";

/** One audited action. */
export interface AuditEntry {
  /** Who acted: a SPIFFE id, "apikey:<id>", "jwt:<sub>", "anonymous" or "system". */
  actor: string;
  /** What was done, e.g. "agent.register", "authz.deny". */
  action: string;
  tenant: string;
  /** What it was done to, e.g. "agent/<id>". */
  resource: string;
  /** "ok", "denied", "error". */
  outcome: string;
  /** Extra, non-sensitive facts. */
  details?: Record<string, unknown>;
  correlationId?: string;
}

/** Result of checking the chain. */
export interface AuditVerification {
  ok: boolean;
  /** Rows checked. */
  checked: number;
  /** First sequence number found wrong, when not ok. */
  badSeq?: number;
  reason?: string;
}

/** Append-only, hash-chained audit trail. */
export interface AuditLog {
  /** Appends an entry; inside a `db.transaction` it commits with the change it records. */
  append(entry: AuditEntry): number;
  /** Recomputes every hash; detects edited, deleted, inserted or truncated rows. */
  verify(): AuditVerification;
}

const GENESIS = "0".repeat(64);

interface AuditRow {
  seq: number;
  at: number;
  actor: string;
  action: string;
  tenant: string;
  resource: string;
  outcome: string;
  details: string;
  correlation_id: string;
  prev_hash: string;
  hash: string;
}

// The hash covers every column but itself, in a fixed order, so any edit changes it.
function rowHash(r: Omit<AuditRow, "hash">): string {
  const canonical = JSON.stringify([
    r.seq,
    r.at,
    r.actor,
    r.action,
    r.tenant,
    r.resource,
    r.outcome,
    r.details,
    r.correlation_id,
    r.prev_hash,
  ]);
  return createHash("sha256").update(canonical).digest("hex");
}

/** Creates the audit log over the `audit_log` and `audit_head` tables. */
export function createAuditLog(db: Db, clock: Clock): AuditLog {
  const head = db.prepare<[], { seq: number; hash: string }>("SELECT seq, hash FROM audit_head WHERE id = 1");
  const insert = db.prepare(
    `INSERT INTO audit_log (seq, at, actor, action, tenant, resource, outcome, details, correlation_id, prev_hash, hash)
     VALUES (@seq, @at, @actor, @action, @tenant, @resource, @outcome, @details, @correlation_id, @prev_hash, @hash)`,
  );
  const setHead = db.prepare(
    "INSERT INTO audit_head (id, seq, hash) VALUES (1, ?, ?) ON CONFLICT(id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash",
  );
  // Reading the head and writing the row must not interleave with another writer.
  const appendTx = db.transaction((entry: AuditEntry): number => {
    const prev = head.get() ?? { seq: 0, hash: GENESIS };
    const row: Omit<AuditRow, "hash"> = {
      seq: prev.seq + 1,
      at: clock.now(),
      actor: entry.actor,
      action: entry.action,
      tenant: entry.tenant,
      resource: entry.resource,
      outcome: entry.outcome,
      details: JSON.stringify(entry.details ?? {}),
      correlation_id: entry.correlationId ?? "",
      prev_hash: prev.hash,
    };
    const hash = rowHash(row);
    insert.run({ ...row, hash });
    setHead.run(row.seq, hash);
    return row.seq;
  });

  return {
    append: (entry) => appendTx(entry),
    verify() {
      let expectedPrev = GENESIS;
      let expectedSeq = 1;
      let checked = 0;
      for (const row of db.prepare<[], AuditRow>("SELECT * FROM audit_log ORDER BY seq").iterate()) {
        if (row.seq !== expectedSeq) {
          return { ok: false, checked, badSeq: expectedSeq, reason: `row ${expectedSeq} is missing` };
        }
        if (row.prev_hash !== expectedPrev) {
          return { ok: false, checked, badSeq: row.seq, reason: `row ${row.seq} does not follow row ${row.seq - 1}` };
        }
        if (rowHash(row) !== row.hash) {
          return { ok: false, checked, badSeq: row.seq, reason: `row ${row.seq} was modified` };
        }
        expectedPrev = row.hash;
        expectedSeq++;
        checked++;
      }
      const h = head.get();
      const lastSeq = expectedSeq - 1;
      if ((h?.seq ?? 0) !== lastSeq || (h?.hash ?? GENESIS) !== expectedPrev) {
        return {
          ok: false,
          checked,
          badSeq: lastSeq + 1,
          reason: `the chain ends at row ${lastSeq} but the head records row ${h?.seq ?? 0}: rows were removed`,
        };
      }
      return { ok: true, checked };
    },
  };
}
