import { createHash } from "node:crypto";
import type { Db } from "../store/index.js";
import type { Clock } from "../common/index.js";
import {
  consistencyProof,
  EMPTY_ROOT,
  inclusionProof,
  leafHash,
  nodeHash,
  rootHash,
  type NodeReader,
} from "./merkle.js";
import type { Checkpoint, SignedCheckpoint } from "./checkpoint.js";

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

/** An entry as stored: its leaf index (seq - 1), time and the exact bytes hashed into the tree. */
export interface StoredAuditEntry extends Required<AuditEntry> {
  index: number;
  at: number;
  /** The leaf data: MTH({leaf}) = SHA-256(0x00 || leaf). */
  leaf: Uint8Array;
}

/** Result of checking the log. */
export interface AuditVerification {
  ok: boolean;
  /** Rows checked. */
  checked: number;
  /** First sequence number found wrong, when not ok. */
  badSeq?: number;
  reason?: string;
  /** The tree size and root the rows hash to, when they form an unbroken log. */
  size?: number;
  root?: Uint8Array;
  /** The outside checkpoint the log was checked against, when one was given and it matched. */
  checkpointSize?: number;
}

/** The verifiable audit trail: a hash chain whose rows are also the leaves of an RFC 6962 Merkle tree. */
export interface AuditLog {
  /** Appends an entry; inside a `db.transaction` it commits with the change it records. O(log n) tree writes. */
  append(entry: AuditEntry): number;
  /**
   * Recomputes every row hash, chain link and the Merkle tree from the rows. With a checkpoint
   * held outside the edge, the first `checkpoint.size` rows must hash to its root: truncation,
   * deletion, rewinding, forged rows and a full re-hash are all detected. Read-only.
   */
  verify(checkpoint?: Checkpoint): AuditVerification;
  /** Hashes rows not yet in the tree into it (rows written before the tree existed). Returns how many. */
  catchUp(): number;
  /** The current tree size and root (from the stored tree). */
  head(): { size: number; root: Uint8Array };
  /** The root hash of the first `size` leaves. */
  rootAt(size: number): Uint8Array;
  /** RFC 6962 audit path of leaf `index` in the tree of `size` leaves. */
  inclusionProof(index: number, size: number): Uint8Array[];
  /** RFC 6962 consistency proof from tree size `from` to `to`. */
  consistencyProof(from: number, to: number): Uint8Array[];
  /** Entries with leaf indexes in [start, end). */
  entries(start: number, end: number): StoredAuditEntry[];
  /** Stores a checkpoint the kernel signed. */
  saveCheckpoint(c: SignedCheckpoint, issuedAt: number): void;
  /** The newest checkpoint the kernel signed, if any. */
  latestCheckpoint(): SignedCheckpoint | undefined;
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

// The chain hash and the Merkle leaf cover every column but `hash`, in a fixed order, so any edit changes both.
function canonical(r: Omit<AuditRow, "hash">): string {
  return JSON.stringify([
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
}

function rowHash(r: Omit<AuditRow, "hash">): string {
  return createHash("sha256").update(canonical(r)).digest("hex");
}

const leafOf = (r: Omit<AuditRow, "hash">): Uint8Array => leafHash(Buffer.from(canonical(r), "utf8"));

/** Builds an RFC 6962 root incrementally from leaf hashes (a stack of perfect subtrees). */
class RootBuilder {
  private readonly stack: { hash: Uint8Array; size: number }[] = [];
  size = 0;
  push(leaf: Uint8Array): void {
    let node = { hash: leaf, size: 1 };
    while (this.stack.length && this.stack.at(-1)!.size === node.size) {
      const left = this.stack.pop()!;
      node = { hash: nodeHash(left.hash, node.hash), size: left.size * 2 };
    }
    this.stack.push(node);
    this.size++;
  }
  root(): Uint8Array {
    if (!this.stack.length) return EMPTY_ROOT;
    let r = this.stack.at(-1)!.hash;
    for (let i = this.stack.length - 2; i >= 0; i--) r = nodeHash(this.stack[i]!.hash, r);
    return r;
  }
}

const sameHash = (a: Uint8Array, b: Uint8Array): boolean => Buffer.compare(a, b) === 0;

/** Creates the audit log over the `audit_log`, `audit_head`, `audit_tree` and `audit_checkpoints` tables. */
export function createAuditLog(db: Db, clock: Clock): AuditLog {
  const head = db.prepare<[], { seq: number; hash: string }>("SELECT seq, hash FROM audit_head WHERE id = 1");
  const insert = db.prepare(
    `INSERT INTO audit_log (seq, at, actor, action, tenant, resource, outcome, details, correlation_id, prev_hash, hash)
     VALUES (@seq, @at, @actor, @action, @tenant, @resource, @outcome, @details, @correlation_id, @prev_hash, @hash)`,
  );
  const setHead = db.prepare(
    "INSERT INTO audit_head (id, seq, hash) VALUES (1, ?, ?) ON CONFLICT(id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash",
  );
  const getNode = db.prepare<[number, number], { hash: Buffer }>(
    "SELECT hash FROM audit_tree WHERE level = ? AND idx = ?",
  );
  const putNode = db.prepare("INSERT INTO audit_tree (level, idx, hash) VALUES (?, ?, ?)");
  const leafCount = db.prepare<[], { n: number }>("SELECT count(*) AS n FROM audit_tree WHERE level = 0");

  const read: NodeReader = (level, index) => {
    const row = getNode.get(level, index);
    if (!row) throw new Error(`audit tree node (${level}, ${index}) is missing`);
    return new Uint8Array(row.hash);
  };

  // Leaf `index` and every perfect subtree it completes: at most log2(n) + 1 writes, usually 2.
  const addLeaf = (index: number, leaf: Uint8Array): void => {
    putNode.run(0, index, leaf);
    let level = 0;
    let idx = index;
    let hash = leaf;
    while (idx % 2 === 1) {
      hash = nodeHash(read(level, idx - 1), hash);
      level++;
      idx = (idx - 1) / 2;
      putNode.run(level, idx, hash);
    }
  };

  const treeSize = (): number => leafCount.get()!.n;

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
    addLeaf(row.seq - 1, leafOf(row));
    return row.seq;
  });

  const catchUpTx = db.transaction((): number => {
    const from = treeSize();
    let added = 0;
    const rows = db.prepare<[number], AuditRow>("SELECT * FROM audit_log WHERE seq > ? ORDER BY seq").all(from);
    for (const row of rows) {
      if (row.seq !== from + added + 1) throw new Error(`audit row ${from + added + 1} is missing`);
      addLeaf(row.seq - 1, leafOf(row));
      added++;
    }
    return added;
  });

  const checkSize = (size: number, what: string): void => {
    const n = treeSize();
    if (!Number.isSafeInteger(size) || size < 0 || size > n)
      throw new RangeError(`${what} ${size} is beyond the tree size ${n}`);
  };

  const getCheckpoint = db.prepare<[], { size: number; root: Buffer; note: string }>(
    "SELECT size, root, note FROM audit_checkpoints ORDER BY size DESC LIMIT 1",
  );
  const putCheckpoint = db.prepare(
    "INSERT INTO audit_checkpoints (size, root, note, issued_at) VALUES (?, ?, ?, ?) ON CONFLICT(size) DO NOTHING",
  );

  return {
    append: (entry) => appendTx(entry),
    catchUp: () => catchUpTx(),
    head() {
      const size = treeSize();
      return { size, root: rootHash(read, size) };
    },
    rootAt(size) {
      checkSize(size, "tree size");
      return rootHash(read, size);
    },
    inclusionProof(index, size) {
      checkSize(size, "tree size");
      return inclusionProof(read, index, size);
    },
    consistencyProof(from, to) {
      checkSize(to, "tree size");
      return consistencyProof(read, from, to);
    },
    entries(start, end) {
      const rows = db
        .prepare<[number, number], AuditRow>("SELECT * FROM audit_log WHERE seq > ? AND seq <= ? ORDER BY seq")
        .all(start, end);
      return rows.map((r) => ({
        index: r.seq - 1,
        at: r.at,
        actor: r.actor,
        action: r.action,
        tenant: r.tenant,
        resource: r.resource,
        outcome: r.outcome,
        details: JSON.parse(r.details) as Record<string, unknown>,
        correlationId: r.correlation_id,
        leaf: Buffer.from(canonical(r), "utf8"),
      }));
    },
    saveCheckpoint(c, issuedAt) {
      putCheckpoint.run(c.size, c.root, c.note, issuedAt);
    },
    latestCheckpoint() {
      const row = getCheckpoint.get();
      return (
        row && { origin: row.note.slice(0, row.note.indexOf("\n")), size: row.size, root: row.root, note: row.note }
      );
    },
    verify(checkpoint) {
      let expectedPrev = GENESIS;
      let expectedSeq = 1;
      let checked = 0;
      const tree = new RootBuilder();
      let checkpointRoot: Uint8Array | undefined = checkpoint?.size === 0 ? EMPTY_ROOT : undefined;
      const fail = (badSeq: number, reason: string): AuditVerification => ({ ok: false, checked, badSeq, reason });
      for (const row of db.prepare<[], AuditRow>("SELECT * FROM audit_log ORDER BY seq").iterate()) {
        if (row.seq !== expectedSeq) return fail(expectedSeq, `row ${expectedSeq} is missing`);
        if (row.prev_hash !== expectedPrev) return fail(row.seq, `row ${row.seq} does not follow row ${row.seq - 1}`);
        if (rowHash(row) !== row.hash) return fail(row.seq, `row ${row.seq} was modified`);
        tree.push(leafOf(row));
        if (checkpoint && tree.size === checkpoint.size) checkpointRoot = tree.root();
        expectedPrev = row.hash;
        expectedSeq++;
        checked++;
      }
      const h = head.get();
      const lastSeq = expectedSeq - 1;
      if ((h?.seq ?? 0) !== lastSeq || (h?.hash ?? GENESIS) !== expectedPrev) {
        return fail(
          lastSeq + 1,
          `the chain ends at row ${lastSeq} but the head records row ${h?.seq ?? 0}: rows were removed`,
        );
      }
      const root = tree.root();
      if (checkpoint) {
        if (checkpoint.size > checked)
          return fail(
            checked + 1,
            `the log holds ${checked} rows but a checkpoint held outside the edge commits to ${checkpoint.size}: ` +
              `rows were removed (truncated or rewound)`,
          );
        if (!sameHash(checkpointRoot!, checkpoint.root))
          return fail(
            1,
            `the first ${checkpoint.size} rows do not hash to the root of the checkpoint held outside the edge: ` +
              `rows were edited, replaced or re-hashed`,
          );
      }
      // The stored tree must be the tree of the rows (it is what proofs are served from).
      const stored = treeSize();
      if (stored > checked)
        return fail(checked + 1, `the Merkle tree holds ${stored} leaves but the log ${checked} rows`);
      let storedRoot: Uint8Array | undefined;
      try {
        storedRoot = rootHash(read, stored);
      } catch {
        storedRoot = undefined;
      }
      if (stored === checked && !(storedRoot && sameHash(storedRoot, root)))
        return fail(1, "the stored Merkle tree does not match the rows");
      const result: AuditVerification = { ok: true, checked, size: checked, root };
      if (checkpoint) result.checkpointSize = checkpoint.size;
      return result;
    },
  };
}
