import test from "ava";
import { openDatabase, type Db } from "../../src/store/database.js";
import { migrateDown, migrateUp, migrationStatus } from "../../src/store/migrator.js";
import { MIGRATIONS } from "../../src/store/migrations/index.js";

function schema(db: Db): string[] {
  return (
    db
      .prepare("SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' ORDER BY type, name")
      .all() as { type: string; name: string; sql: string | null }[]
  ).map((r) => `${r.type} ${r.name} ${r.sql ?? ""}`);
}

test("migrator - applies every migration and reports status", (t) => {
  const db = openDatabase({ path: ":memory:" });
  t.deepEqual(
    migrateUp(db, MIGRATIONS),
    MIGRATIONS.map((m) => m.version),
  );
  const status = migrationStatus(db, MIGRATIONS);
  t.is(status.current, MIGRATIONS.length);
  t.is(status.pending.length, 0);
  t.deepEqual(migrateUp(db, MIGRATIONS), [], "a second run applies nothing");
});

test("migrator - down then up restores the schema and keeps data in tables both versions have", (t) => {
  const db = openDatabase({ path: ":memory:" });
  migrateUp(db, MIGRATIONS);
  const full = schema(db);
  db.prepare("INSERT INTO agents VALUES ('a1', 'acme', 'n', '1', 'h:1', '[]', '{}', 1, 2, 1)").run();
  db.prepare(
    "INSERT INTO outbox (event_id, type, tenant, subject, envelope, created_at) VALUES ('e1', 't', 'acme', 's', x'00', 1)",
  ).run();
  for (let step = MIGRATIONS.length; step > 1; step--) {
    t.deepEqual(migrateDown(db, MIGRATIONS), [step]);
    t.is(migrationStatus(db, MIGRATIONS).current, step - 1);
    // Tables of migration 1 exist in every version: their rows must survive every down step.
    t.is((db.prepare("SELECT count(*) AS n FROM agents").get() as { n: number }).n, 1);
    t.is((db.prepare("SELECT count(*) AS n FROM outbox").get() as { n: number }).n, 1);
  }
  migrateUp(db, MIGRATIONS);
  t.deepEqual(schema(db), full);
  t.deepEqual(db.prepare("SELECT id, tenant, heartbeat_at FROM agents").get(), {
    id: "a1",
    tenant: "acme",
    heartbeat_at: 2,
  });
});

test("migrator - refuses a database newer than the code", (t) => {
  const db = openDatabase({ path: ":memory:" });
  migrateUp(db, MIGRATIONS);
  t.throws(() => migrateUp(db, MIGRATIONS.slice(0, 1)), { message: /newer than this kernel/ });
});
