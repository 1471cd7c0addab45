import test from "ava";
import { createManualClock } from "../../src/common/clock.js";
import { openDatabase } from "../../src/store/database.js";
import { migrateUp } from "../../src/store/migrator.js";
import { MIGRATIONS } from "../../src/store/migrations/index.js";
import { createAuditLog } from "../../src/audit/audit-log.js";

function setup() {
  const db = openDatabase({ path: ":memory:" });
  migrateUp(db, MIGRATIONS);
  const audit = createAuditLog(db, createManualClock());
  for (let i = 0; i < 5; i++)
    audit.append({
      actor: `user-${i}`,
      action: "agent.register",
      tenant: "acme",
      resource: `agent/${i}`,
      outcome: "ok",
      details: { i },
    });
  return { db, audit };
}

test("audit log - an untouched chain verifies", (t) => {
  const { audit } = setup();
  t.like(audit.verify(), { ok: true, checked: 5, size: 5 });
});

test("audit log - an edited row is detected", (t) => {
  const { db, audit } = setup();
  db.prepare("UPDATE audit_log SET actor = 'mallory' WHERE seq = 3").run();
  const result = audit.verify();
  t.false(result.ok);
  t.is(result.badSeq, 3);
  t.regex(result.reason ?? "", /modified/);
});

test("audit log - an edited row with a recomputed hash still breaks the next link", (t) => {
  const { db, audit } = setup();
  db.prepare(
    "UPDATE audit_log SET hash = 'f'.repeat(64) WHERE seq = 2".replace("'f'.repeat(64)", `'${"f".repeat(64)}'`),
  ).run();
  const result = audit.verify();
  t.false(result.ok);
  t.is(result.badSeq, 2);
});

test("audit log - a deleted row in the middle is detected", (t) => {
  const { db, audit } = setup();
  db.prepare("DELETE FROM audit_log WHERE seq = 2").run();
  const result = audit.verify();
  t.false(result.ok);
  t.is(result.badSeq, 2);
  t.regex(result.reason ?? "", /missing/);
});

test("audit log - deleting the newest rows is detected through the head", (t) => {
  const { db, audit } = setup();
  db.prepare("DELETE FROM audit_log WHERE seq >= 4").run();
  const result = audit.verify();
  t.false(result.ok);
  t.regex(result.reason ?? "", /removed/);
});
