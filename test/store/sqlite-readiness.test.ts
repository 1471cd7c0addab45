import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import test from "ava";
import { openDatabase } from "../../src/store/database.js";
import { checkSqliteWritable } from "../../src/store/sqlite-readiness.js";

test("sqlite readiness - a write lock held by another process is reported at once, not waited for", (t) => {
  const path = join(mkdtempSync(join(tmpdir(), "nops-readiness-")), "kernel.db");
  const db = openDatabase({ path, busyTimeoutMs: 5000 });
  const other = openDatabase({ path });
  t.teardown(() => {
    other.close();
    db.close();
  });
  t.like(checkSqliteWritable(db, path), { state: "ok" });

  other.exec("BEGIN IMMEDIATE");
  const started = performance.now();
  const status = checkSqliteWritable(db, path);
  t.true(performance.now() - started < 1000, "did not wait for the 5 s busy timeout");
  t.like(status, { name: "sqlite", state: "degraded" });
  t.regex(status.detail ?? "", /locked by another writer/);
  t.is(db.pragma("busy_timeout", { simple: true }), 5000, "the connection's busy timeout is restored");

  other.exec("ROLLBACK");
  t.like(checkSqliteWritable(db, path), { state: "ok" });
});
