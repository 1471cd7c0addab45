import { createHash } from "node:crypto";
import test from "ava";
import { createManualClock } from "../../src/common/clock.js";
import { openDatabase } from "../../src/store/database.js";
import { migrateUp } from "../../src/store/migrator.js";
import { MIGRATIONS } from "../../src/store/migrations/index.js";
import { createAuditLog } from "../../src/audit/audit-log.js";
import { mth } from "./rfc6962-reference.js";

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

test("audit log - rows of the schema 6 hash chain become the tree's first leaves and stay verifiable", (t) => {
  const db = openDatabase({ path: ":memory:" });
  migrateUp(db, MIGRATIONS, 6);
  // Rows as the chain-only kernel wrote them.
  let prev = "0".repeat(64);
  for (let seq = 1; seq <= 5; seq++) {
    const row = [seq, 1000 + seq, `user-${seq}`, "agent.register", "acme", `agent/${seq}`, "ok", "{}", "", prev];
    const hash = createHash("sha256").update(JSON.stringify(row)).digest("hex");
    db.prepare("INSERT INTO audit_log VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)").run(...row, hash);
    db.prepare(
      "INSERT INTO audit_head (id, seq, hash) VALUES (1, ?, ?) ON CONFLICT(id) DO UPDATE SET seq = ?, hash = ?",
    ).run(seq, hash, seq, hash);
    prev = hash;
  }
  migrateUp(db, MIGRATIONS);
  const audit = createAuditLog(db, createManualClock());
  t.like(audit.verify(), { ok: true, checked: 5 });
  t.is(audit.catchUp(), 5);
  t.is(audit.catchUp(), 0);
  audit.append({ actor: "user-6", action: "agent.register", tenant: "acme", resource: "agent/6", outcome: "ok" });
  const leaves = audit.entries(0, 6).map((e) => e.leaf);
  t.deepEqual(Buffer.from(audit.rootAt(6)), mth(leaves));
  t.deepEqual(Buffer.from(audit.rootAt(5)), mth(leaves.slice(0, 5)));
  t.like(audit.verify({ origin: "o", size: 5, root: mth(leaves.slice(0, 5)) }), {
    ok: true,
    checked: 6,
    checkpointSize: 5,
  });
});

test("audit log - a stored tree that no longer matches the rows is reported", (t) => {
  const { db, audit } = setup();
  db.prepare("UPDATE audit_tree SET hash = zeroblob(32) WHERE level = 0 AND idx = 2").run();
  t.like(audit.verify(), { ok: false, badSeq: 3, reason: "the stored Merkle tree does not match row 3" });
});
