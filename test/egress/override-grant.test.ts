import test from "ava";
import { createManualClock } from "../../src/common/clock.js";
import { createDgeClient } from "../../src/clients/dge-client.js";
import { createEgressGuard, resolveEgressGuardOptions } from "../../src/egress/egress-guard.js";
import {
  createOverrideVerifier,
  createSqliteUsedGrants,
  encodeOverrideGrant,
  type OverrideGrant,
} from "../../src/egress/override-grant.js";
import { DGE_KEYS, makeMeter, makeStore, silent } from "../fixtures/dge-helpers.js";

const approvers = {
  alice: "alice-approver-key-0123456789abcdef0",
  bob: "bob-approver-key-0123456789abcdef000",
  carol: "carol-approver-key-0123456789abcdef",
};
const A = { id: "alice", secret: approvers.alice };
const B = { id: "bob", secret: approvers.bob };

function grant(clock: { now(): number }, over: Partial<OverrideGrant> = {}): OverrideGrant {
  return {
    id: `g-${Math.random().toString(36).slice(2)}`,
    tenant: "acme",
    reason: "incident 42: export for regulator",
    classification: "D3",
    destinations: ["compliance*"],
    issuedAt: clock.now(),
    expiresAt: clock.now() + 30 * 60_000,
    ...over,
  };
}

test("override grant - two distinct approvers, unexpired and in scope: accepted once", (t) => {
  const clock = createManualClock();
  const v = createOverrideVerifier(clock, approvers);
  const header = encodeOverrideGrant(grant(clock), [A, B]);
  const r = v.check(header, "acme", "compliance:https://c.example/v1/evidence");
  t.true(r.ok);
  t.deepEqual(r.ok && r.approvers, ["alice", "bob"]);
  t.like(v.check(header, "acme", "compliance:https://c.example/v1/evidence"), {
    ok: false,
    reason: "override_replayed",
  });
});

test("override grant - a used grant stays refused across a restart (SQLite) until it expires", (t) => {
  const clock = createManualClock();
  const { db } = makeStore(clock);
  const header = encodeOverrideGrant(grant(clock), [A, B]);
  const dest = "compliance:https://c.example/v1/evidence";
  t.true(createOverrideVerifier(clock, approvers, 2, createSqliteUsedGrants(db)).check(header, "acme", dest).ok);
  // A new verifier over the same database: the kernel after a restart.
  const restarted = createOverrideVerifier(clock, approvers, 2, createSqliteUsedGrants(db));
  t.like(restarted.check(header, "acme", dest), { ok: false, reason: "override_replayed" });
  clock.advance(31 * 60_000);
  t.like(restarted.check(header, "acme", dest), { ok: false, reason: "override_expired" });
  t.is(
    (db.prepare("SELECT count(*) AS n FROM egress_override_uses").get() as { n: number }).n,
    0,
    "expired uses are pruned",
  );
});

test("override grant - expired, single-approver, same approver twice, tampered, too long and out-of-scope grants are refused", (t) => {
  const clock = createManualClock();
  const v = createOverrideVerifier(clock, approvers);
  const dest = "compliance:x";
  const g = grant(clock);
  t.like(v.check(encodeOverrideGrant(g, [A]), "acme", dest), { ok: false, reason: "override_insufficient_approvals" });
  t.like(v.check(encodeOverrideGrant(g, [A, A]), "acme", dest), {
    ok: false,
    reason: "override_insufficient_approvals",
  });
  t.like(v.check(encodeOverrideGrant(g, [A, { id: "mallory", secret: "x".repeat(32) }]), "acme", dest), {
    ok: false,
    reason: "override_insufficient_approvals",
  });
  const signed = JSON.parse(Buffer.from(encodeOverrideGrant(g, [A, B]), "base64url").toString()) as {
    grant: OverrideGrant;
  };
  signed.grant.classification = "D4";
  t.like(v.check(Buffer.from(JSON.stringify(signed)).toString("base64url"), "acme", dest), {
    ok: false,
    reason: "override_tampered",
  });
  t.like(v.check(encodeOverrideGrant(grant(clock, { expiresAt: clock.now() + 3_600_001 }), [A, B]), "acme", dest), {
    ok: false,
    reason: "override_bad_validity",
  });
  t.like(v.check(encodeOverrideGrant(g, [A, B]), "beta", dest), { ok: false, reason: "override_scope_mismatch" });
  t.like(v.check(encodeOverrideGrant(g, [A, B]), "acme", "billing:x"), {
    ok: false,
    reason: "override_scope_mismatch",
  });
  t.like(v.check("not-a-grant", "acme", dest), { ok: false, reason: "override_malformed" });
  const later = grant(clock);
  clock.advance(30 * 60_000);
  // Auto-revoked at expiry.
  t.like(v.check(encodeOverrideGrant(later, [A, B]), "acme", dest), { ok: false, reason: "override_expired" });
});

test("override grant - the guard lets a valid grant out without the DGE and audits activation; a bad one is denied and audited", async (t) => {
  const clock = createManualClock();
  const store = makeStore(clock);
  const guard = createEgressGuard(
    {
      clock,
      logger: silent,
      meter: makeMeter().provider.getMeter("t"),
      dge: createDgeClient(
        { clock },
        { url: "http://127.0.0.1:9", protocol: "grpc", keys: DGE_KEYS, maxSkewMs: 300_000 },
      ),
      events: store.events,
      audit: store.audit,
      db: store.db,
    },
    resolveEgressGuardOptions({ tenantTiers: { acme: 1 }, approvers, dgeTimeoutMs: 200 }),
  );
  t.teardown(() => guard.close());
  const payload = "applicant ssn 536-22-1234";
  const ok = await guard.check({
    tenant: "acme",
    transport: "http",
    destination: "compliance:x",
    dataType: "",
    payload,
    override: encodeOverrideGrant(grant(clock), [A, B]),
  });
  t.deepEqual([ok.allowed, ok.reason, ok.classification], [true, "override", "D3"]);
  const bad = await guard.check({
    tenant: "acme",
    transport: "http",
    destination: "compliance:x",
    dataType: "",
    payload,
    override: encodeOverrideGrant(grant(clock), [A]),
  });
  t.deepEqual([bad.allowed, bad.reason], [false, "override_insufficient_approvals"]);
  t.deepEqual(
    store.outbox().map((e) => e.type),
    ["egress.override.activated.v1", "egress.blocked.v1"],
  );
  const audit = store.db
    .prepare<[], { action: string; outcome: string }>("SELECT action, outcome FROM audit_log ORDER BY seq")
    .all();
  t.deepEqual(audit, [
    { action: "egress.override.activated", outcome: "ok" },
    { action: "egress.override.denied", outcome: "denied" },
  ]);
});
