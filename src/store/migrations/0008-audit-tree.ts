import type { Migration } from "../migrator.js";

/**
 * The verifiable audit log (docs/audit.md): audit rows become the leaves of an RFC 6962 Merkle
 * tree. `audit_tree` holds every complete perfect subtree (level 0: the leaf hashes), written in
 * the append's transaction; `audit_checkpoints` the signed checkpoints the kernel issued. Rows of
 * the existing hash chain keep their columns and are hashed into the tree when the kernel starts
 * (SQL alone cannot compute SHA-256).
 */
export const migration0008: Migration = {
  version: 8,
  name: "audit-tree",
  up: `
    CREATE TABLE audit_tree (
      level INTEGER NOT NULL,       -- the subtree holds 2^level leaves
      idx INTEGER NOT NULL,         -- its first leaf is idx << level
      hash BLOB NOT NULL,           -- RFC 6962 MTH of those leaves
      PRIMARY KEY (level, idx)
    ) WITHOUT ROWID;
    CREATE TABLE audit_checkpoints (
      size INTEGER PRIMARY KEY,     -- tree size the checkpoint commits to
      root BLOB NOT NULL,
      note TEXT NOT NULL,           -- the signed note (C2SP tlog-checkpoint)
      issued_at INTEGER NOT NULL
    );
  `,
  down: `
    DROP TABLE audit_checkpoints;
    DROP TABLE audit_tree;
  `,
};
