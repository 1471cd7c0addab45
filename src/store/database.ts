import { mkdirSync } from "node:fs";
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
  if (options.path !== ":memory:") mkdirSync(dirname(options.path), { recursive: true });
  const db = new Database(options.path);
  db.pragma("journal_mode = WAL");
  db.pragma("synchronous = FULL");
  db.pragma("foreign_keys = ON");
  db.pragma(`busy_timeout = ${options.busyTimeoutMs ?? 5000}`);
  return db;
}
