import { statSync } from "node:fs";
import { dirname } from "node:path";
import type { Db } from "./database.js";
import type { DependencyStatus } from "../common/index.js";

function writable(path: string): boolean {
  // Mode bits, not access(2): the kernel often runs as root, for whom access() always says yes.
  return (statSync(path).mode & 0o222) !== 0;
}

/** Readiness of SQLite: the file and its directory are writable and a write lock can be taken. */
export function checkSqliteWritable(db: Db, path: string): DependencyStatus {
  const name = "sqlite";
  try {
    if (path !== ":memory:") {
      if (!writable(path)) return { name, state: "down", detail: `database file ${path} is read-only` };
      if (!writable(dirname(path)))
        return { name, state: "down", detail: `database directory ${dirname(path)} is read-only` };
    }
    // Takes and releases the write lock: fails on SQLITE_READONLY or a full disk. Without waiting:
    // a lock held by another process is reported, not waited for on the event loop for the
    // whole busy timeout.
    const busyTimeout = db.pragma("busy_timeout", { simple: true }) as number;
    db.pragma("busy_timeout = 0");
    try {
      db.exec("BEGIN IMMEDIATE; ROLLBACK;");
    } finally {
      db.pragma(`busy_timeout = ${busyTimeout}`);
    }
    return { name, state: "ok" };
  } catch (e) {
    const code = (e as { code?: string }).code;
    if (code === "SQLITE_BUSY")
      return { name, state: "degraded", detail: `database ${path} is locked by another writer; writes wait for it` };
    return { name, state: "down", detail: `database ${path} is not writable: ${(e as Error).message}` };
  }
}
