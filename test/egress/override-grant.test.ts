import test from "ava";
import { createManualClock, systemClock, type Clock } from "../../src/common/clock.js";
import { createDgeClient } from "../../src/clients/dge-client.js";
import { createEgressGuard, resolveEgressGuardOptions } from "../../src/egress/egress-guard.js";
import {
  createOverrideVerifier,
  createSqliteUsedGrants,
  encodeOverrideGrant,
  type OverrideGrant,
} from "../../src/egress/override-grant.js";
import { DGE_KEYS, makeMeter, makeStore, silent, spawnDge } from "../fixtures/dge-helpers.js";

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

function guardWith(
  clock: Clock,
  store: ReturnType<typeof makeStore>,
  dgeUrl: string,
  dgeTimeoutMs = 200,
  // Long enough that one test's refusals share one coalescing window; flush() ends it.
  eventFlushMs = 60_000,
) {
  return createEgressGuard(
    {
      clock,
      logger: silent,
      meter: makeMeter().provider.getMeter("t"),
      dge: createDgeClient({ clock }, { url: dgeUrl, protocol: "grpc", keys: DGE_KEYS, maxSkewMs: 300_000 }),
      events: store.events,
      audit: store.audit,
      db: store.db,
    },
    resolveEgressGuardOptions({ tenantTiers: { acme: 1 }, approvers, dgeTimeoutMs, eventFlushMs }),
  );
}

test("override grant - a D4 grant lets data out without the DGE and audits activation; a bad one is denied and audited", async (t) => {
  const clock = createManualClock();
  const store = makeStore(clock);
  const guard = guardWith(clock, store, "http://127.0.0.1:9");
  t.teardown(() => guard.close());
  const payload = "applicant ssn 536-22-1234";
  const ok = await guard.check({
    tenant: "acme",
    transport: "http",
    destination: "compliance:x",
    dataType: "",
    payload,
    override: encodeOverrideGrant(grant(clock, { classification: "D4" }), [A, B]),
  });
  t.deepEqual([ok.allowed, ok.reason, ok.classification], [true, "override", "D4"]);
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

test("override grant - a grant below D4 needs the data's class: no DGE answer denies it and leaves it unused", async (t) => {
  const clock = createManualClock();
  const store = makeStore(clock);
  const guard = guardWith(clock, store, "http://127.0.0.1:9");
  t.teardown(() => guard.close());
  const header = encodeOverrideGrant(grant(clock, { classification: "D3" }), [A, B]);
  const d = await guard.check({
    tenant: "acme",
    transport: "http",
    destination: "compliance:x",
    dataType: "",
    payload: "applicant ssn 536-22-1234",
    override: header,
  });
  t.deepEqual([d.allowed, d.reason], [false, "dge_timeout"]);
  t.false(store.outbox().some((e) => e.type === "egress.override.activated.v1"));
  // The grant was not consumed: the verifier of the same database still accepts it once.
  t.true(
    createOverrideVerifier(clock, approvers, 2, createSqliteUsedGrants(store.db)).check(header, "acme", "compliance:x")
      .ok,
  );
});

test("override grant - the declared class bounds what a grant releases: a D0 grant cannot release a card number", async (t) => {
  const dge = await spawnDge(t);
  const clock = systemClock;
  const store = makeStore(clock);
  const guard = guardWith(clock, store, dge.url, 30_000);
  t.teardown(() => guard.close());
  const card = "refund to card 4111 1111 1111 1111";
  const ask = (classification: OverrideGrant["classification"], payload: string) =>
    guard.check({
      tenant: "acme",
      transport: "http",
      destination: "compliance:x",
      dataType: "",
      payload,
      override: encodeOverrideGrant(grant(clock, { classification }), [A, B]),
    });
  for (const low of ["D0", "D1", "D2", "D3"] as const) {
    const d = await ask(low, card);
    t.deepEqual([d.allowed, d.reason, d.classification], [false, "override_class_exceeded", "D4"], low);
  }
  const ssn = await ask("D3", "applicant ssn 536-22-1234");
  t.deepEqual([ssn.allowed, ssn.reason, ssn.classification], [true, "override", "D3"]);
  const d4 = await ask("D4", card);
  t.deepEqual([d4.allowed, d4.reason], [true, "override"]);
  guard.flush();
  const audit = store.db
    .prepare<[], { action: string; details: string }>("SELECT action, details FROM audit_log ORDER BY seq")
    .all();
  t.deepEqual(
    audit.map((a) => [a.action, (JSON.parse(a.details) as { reason: string }).reason]),
    [
      ["egress.override.denied", "override_class_exceeded"],
      ["egress.override.activated", "override"],
      ["egress.override.activated", "override"],
      ["egress.override.denied", "override_class_exceeded"],
    ],
    "four refusals of one kind in a window: the first row at once, the other three as one counted row",
  );
  t.deepEqual(
    [audit[0], audit[3]].map((a) => (JSON.parse(a?.details ?? "{}") as { count: number }).count),
    [1, 3],
  );
  for (const a of audit) t.false(a.details.includes("4111"));
});

test("override grant - with DGE_ENABLED false nothing is classified: a valid grant passes as break-glass, a bad one is still refused", async (t) => {
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
    resolveEgressGuardOptions({ tenantTiers: { acme: 1 }, approvers, dgeEnabled: false }),
  );
  t.teardown(() => guard.close());
  const call = (override: string) =>
    guard.check({
      tenant: "acme",
      transport: "http",
      destination: "compliance:x",
      dataType: "",
      payload: "x",
      override,
    });
  t.like(await call(encodeOverrideGrant(grant(clock, { classification: "D0" }), [A, B])), {
    allowed: true,
    reason: "override",
    classification: "D0",
  });
  t.like(await call(encodeOverrideGrant(grant(clock), [A])), {
    allowed: false,
    reason: "override_insufficient_approvals",
  });
});
