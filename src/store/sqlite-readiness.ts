import { statSync } from "node:fs";
import { dirname } from "node:path";
import type { Db } from "./database.js";
import type { DependencyStatus } from "../server/readiness.js";

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
      if (!writable(dirname(path))) return { name, state: "down", detail: `database directory ${dirname(path)} is read-only` };
    }
    // Takes and releases the write lock: fails on SQLITE_READONLY, a full disk or a stuck writer.
    db.exec("BEGIN IMMEDIATE; ROLLBACK;");
    return { name, state: "ok" };
  } catch (e) {
    return { name, state: "down", detail: `database ${path} is not writable: ${(e as Error).message}` };
  }
}
