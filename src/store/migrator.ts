import type { Db } from "./database.js";
import { StoreError } from "../common/index.js";

/** One schema version: `up` moves to it, `down` returns to the previous one. */
export interface Migration {
  version: number;
  name: string;
  up: string;
  down: string;
}

/** Where the schema stands. */
export interface MigrationStatus {
  current: number;
  latest: number;
  applied: { version: number; name: string; appliedAt: number }[];
  pending: { version: number; name: string }[];
}

function ensureTable(db: Db): void {
  db.exec(`CREATE TABLE IF NOT EXISTS schema_migrations (
    version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)`);
}

function checkOrder(migrations: readonly Migration[]): void {
  migrations.forEach((m, i) => {
    if (m.version !== i + 1) throw new StoreError(`migration ${m.name} has version ${m.version}, expected ${i + 1}`);
  });
}

/** Reports applied and pending migrations. */
export function migrationStatus(db: Db, migrations: readonly Migration[]): MigrationStatus {
  ensureTable(db);
  const rows = db
    .prepare("SELECT version, name, applied_at AS appliedAt FROM schema_migrations ORDER BY version")
    .all() as MigrationStatus["applied"];
  const current = rows.at(-1)?.version ?? 0;
  return {
    current,
    latest: migrations.length,
    applied: rows,
    pending: migrations.filter((m) => m.version > current).map(({ version, name }) => ({ version, name })),
  };
}

/** Applies pending migrations up to `target` (default: latest), each in its own transaction. */
export function migrateUp(
  db: Db,
  migrations: readonly Migration[],
  target = migrations.length,
  now = Date.now(),
): number[] {
  checkOrder(migrations);
  const { current } = migrationStatus(db, migrations);
  if (current > migrations.length) {
    throw new StoreError(`database schema is at version ${current}, newer than this kernel (${migrations.length})`);
  }
  const applied: number[] = [];
  for (const m of migrations) {
    if (m.version <= current || m.version > target) continue;
    db.transaction(() => {
      db.exec(m.up);
      db.prepare("INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)").run(
        m.version,
        m.name,
        now,
      );
    })();
    applied.push(m.version);
  }
  return applied;
}

/** Reverts the newest `steps` migrations (default one), each in its own transaction. */
export function migrateDown(db: Db, migrations: readonly Migration[], steps = 1): number[] {
  checkOrder(migrations);
  const reverted: number[] = [];
  for (let i = 0; i < steps; i++) {
    const { current } = migrationStatus(db, migrations);
    if (current === 0) break;
    const m = migrations[current - 1];
    if (!m) throw new StoreError(`database schema is at version ${current}, unknown to this kernel`);
    // Dropping a table that others reference needs foreign keys off for the duration.
    db.pragma("foreign_keys = OFF");
    try {
      db.transaction(() => {
        db.exec(m.down);
        db.prepare("DELETE FROM schema_migrations WHERE version = ?").run(m.version);
      })();
    } finally {
      db.pragma("foreign_keys = ON");
    }
    reverted.push(m.version);
  }
  return reverted;
}
