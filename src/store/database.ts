import { chmodSync, closeSync, existsSync, mkdirSync, openSync, statSync } from "node:fs";
import { dirname } from "node:path";
import Database from "better-sqlite3";

export type { Database };
/** An open better-sqlite3 connection. */
export type Db = Database.Database;

/** Options for the SQLite connection. */
export interface DatabaseOptions {
  /** File path, or ":memory:". */
  path: string;
  /** How long a writer waits for a lock before SQLITE_BUSY. @default 5000 */
  busyTimeoutMs?: number;
}

/**
 * Opens the kernel database in WAL mode with synchronous=FULL: every commit is on disk before
 * it is acknowledged (registrations, outbox rows, audit rows). High-rate writes such as
 * heartbeats are batched by their owners so one fsync covers many of them.
 */
export function openDatabase(options: DatabaseOptions): Db {
  if (options.path !== ":memory:") restrictFiles(options.path);
  const db = new Database(options.path);
  db.pragma("journal_mode = WAL");
  db.pragma("synchronous = FULL");
  db.pragma("foreign_keys = ON");
  db.pragma(`busy_timeout = ${options.busyTimeoutMs ?? 5000}`);
  beginImmediate(db);
  return db;
}

/**
 * Makes `db.transaction(fn)()` begin IMMEDIATE (the variants stay as they are). Two connections write to the
 * database (the kernel's and the Publish writer thread's, src/events/publish-writer.ts); a deferred transaction
 * that reads and then writes fails with SQLITE_BUSY at once when the other committed in between, without
 * waiting out the busy timeout. Taking the write lock when the transaction begins waits for it instead.
 * Nested calls are savepoints, as before.
 */
function beginImmediate(db: Db): void {
  // eslint-disable-next-line @typescript-eslint/unbound-method -- called with db as this
  const transaction = db.transaction;
  db.transaction = ((fn: Parameters<Db["transaction"]>[0]) => {
    const t = transaction.call(db, fn);
    // better-sqlite3's variants close over the database and ignore `this`.
    // eslint-disable-next-line @typescript-eslint/unbound-method
    const { deferred, immediate, exclusive } = t;
    return Object.assign(immediate.bind(null), { default: immediate, deferred, immediate, exclusive });
  }) as Db["transaction"];
}

/**
 * Data at rest is the owner's only: the directory is created 0700 and the database 0600 before
 * SQLite opens it (SQLite gives the -wal and -shm files the database file's mode). Files left
 * readable by others by an older version are tightened.
 */
function restrictFiles(path: string): void {
  mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
  if (!existsSync(path)) closeSync(openSync(path, "a", 0o600));
  for (const file of [path, `${path}-wal`, `${path}-shm`]) {
    if (existsSync(file) && (statSync(file).mode & 0o077) !== 0) chmodSync(file, 0o600);
  }
}
