import test from "ava";
import { createPrivateKey } from "node:crypto";
import { createManualClock } from "../../src/common/clock.js";
import { openDatabase } from "../../src/store/database.js";
import { migrateUp } from "../../src/store/migrator.js";
import { MIGRATIONS } from "../../src/store/migrations/index.js";
import { createAuditLog } from "../../src/audit/audit-log.js";
import { createLogger } from "../../src/telemetry/logger.js";
import { createPeerRegistry } from "../../src/federation/peer-registry.js";
import { createDelegations, DEFAULT_DELEGATION_OPTIONS } from "../../src/federation/delegation.js";
import { FederationRefusal, type SigningIdentity } from "../../src/federation/kernel-jws.js";
import { createTestCa, type TestCa } from "../helpers/test-ca.js";

const A = "spiffe://edge-a.test/nops/kernel/edge-a";
const B = "spiffe://edge-b.test/nops/kernel/edge-b";
const C = "spiffe://edge-c.test/nops/kernel/edge-c";

async function kernelIdentity(ca: TestCa, spiffeId: string): Promise<SigningIdentity> {
  const svid = await ca.issue({ spiffeId });
  return { spiffeId, certificates: svid.certificates, privateKey: createPrivateKey(svid.keyPem) };
}

async function side(
  self: SigningIdentity,
  peers: { id: string; ca: TestCa; inbound: string[]; outbound: string[] }[],
  start: number,
  options: Partial<typeof DEFAULT_DELEGATION_OPTIONS> = {},
) {
  const db = openDatabase({ path: ":memory:" });
  migrateUp(db, MIGRATIONS);
  const clock = createManualClock(start);
  const audit = createAuditLog(db, clock);
  const registry = createPeerRegistry({ db, audit, clock, logger: createLogger({ level: "silent", redactPaths: [] }) });
  for (const p of peers) {
    registry.add(
      {
        spiffeId: p.id,
        grpcEndpoint: "127.0.0.1:1",
        httpEndpoint: "https://127.0.0.1:2",
        bundle: p.ca.certPem,
        agreement: { inbound: { tenants: p.inbound }, outbound: { tenants: p.outbound } },
      },
      "test",
    );
    registry.establish(p.id, "test");
  }
  const delegations = createDelegations(
    { registry, audit, clock, identity: () => self },
    { ...DEFAULT_DELEGATION_OPTIONS, ...options },
  );
  const denials = () =>
    db.prepare("SELECT count(*) AS n FROM audit_log WHERE action = 'federation.delegation'").get() as { n: number };
  return { delegations, clock, denials: () => denials().n };
}

async function refusal(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return "accepted";
  } catch (err) {
    return err instanceof FederationRefusal ? err.code : String(err);
  }
}

test("delegation - audience-bound, short-lived, single-use, within the agreement; every refusal audited", async (t) => {
  const [caA, caB, caC] = await Promise.all(
    ["edge-a.test", "edge-b.test", "edge-c.test"].map((td) => createTestCa(td)),
  );
  const now = Date.now();
  const a = await side(
    await kernelIdentity(caA!, A),
    [
      { id: B, ca: caB!, inbound: [], outbound: ["acme", "globex"] },
      { id: C, ca: caC!, inbound: [], outbound: ["acme"] },
    ],
    now,
  );
  const b = await side(await kernelIdentity(caB!, B), [{ id: A, ca: caA!, inbound: ["acme"], outbound: [] }], now);

  const token = (await a.delegations.issue({ audience: B, tenant: "acme", principal: "apikey:k1" })).token;
  const ok = await b.delegations.verify(token, A);
  t.deepEqual(
    { ...ok, expiresAt: undefined },
    {
      originKernel: A,
      originalPrincipal: "apikey:k1",
      tenant: "acme",
      expiresAt: undefined,
    },
  );
  t.is(b.denials(), 0);

  // Replayed.
  t.is(await refusal(b.delegations.verify(token, A)), "unauthenticated");
  // Another audience (a delegation for C presented to B).
  t.is(
    await refusal(
      b.delegations.verify((await a.delegations.issue({ audience: C, tenant: "acme", principal: "p" })).token, A),
    ),
    "permission-denied",
  );
  // A tenant A may send but B does not take in.
  t.is(
    await refusal(
      b.delegations.verify((await a.delegations.issue({ audience: B, tenant: "globex", principal: "p" })).token, A),
    ),
    "permission-denied",
  );
  // Presented by a kernel other than its signer.
  t.is(
    await refusal(
      b.delegations.verify((await a.delegations.issue({ audience: B, tenant: "acme", principal: "p" })).token, C),
    ),
    "permission-denied",
  );
  // Expired.
  const late = (await a.delegations.issue({ audience: B, tenant: "acme", principal: "p" })).token;
  b.clock.advance((DEFAULT_DELEGATION_OPTIONS.ttlSeconds + 1) * 1000);
  t.is(await refusal(b.delegations.verify(late, A)), "unauthenticated");
  // Forged: the payload altered under A's signature.
  const [h, p, s] = (await a.delegations.issue({ audience: B, tenant: "acme", principal: "p" })).token.split(".");
  const altered = Buffer.from(Buffer.from(p!, "base64url").toString().replace('"p"', '"admin"')).toString("base64url");
  b.clock.advance(-(DEFAULT_DELEGATION_OPTIONS.ttlSeconds + 1) * 1000);
  t.is(await refusal(b.delegations.verify(`${h}.${altered}.${s}`, A)), "unauthenticated");
  t.is(b.denials(), 6);
  // A never issues for a tenant outside its outbound agreement.
  t.is(await refusal(a.delegations.issue({ audience: C, tenant: "globex", principal: "p" })), "permission-denied");
});

test("delegation - the replay cache is bounded: entries leave with their expiry, a full cache refuses RESOURCE_EXHAUSTED", async (t) => {
  const [caA, caB] = await Promise.all(["edge-a.test", "edge-b.test"].map((td) => createTestCa(td)));
  const now = Date.now();
  const a = await side(await kernelIdentity(caA!, A), [{ id: B, ca: caB!, inbound: [], outbound: ["acme"] }], now);
  const b = await side(await kernelIdentity(caB!, B), [{ id: A, ca: caA!, inbound: ["acme"], outbound: [] }], now, {
    maxRemembered: 3,
  });
  const issue = async () => (await a.delegations.issue({ audience: B, tenant: "acme", principal: "p" })).token;

  const first = await issue();
  t.is(await refusal(b.delegations.verify(first, A)), "accepted");
  t.is(await refusal(b.delegations.verify(await issue(), A)), "accepted");
  // Half a lifetime later, a third fills the cache.
  a.clock.advance(15_000);
  b.clock.advance(15_000);
  const third = await issue();
  t.is(await refusal(b.delegations.verify(third, A)), "accepted");
  // Full: a fresh, valid delegation is refused with a clear, retryable code, and audited.
  const denied = b.denials();
  const fourth = await issue();
  t.is(await refusal(b.delegations.verify(fourth, A)), "resource-exhausted");
  t.is(b.denials(), denied + 1);
  // A replay is still a replay while the cache is full.
  t.is(await refusal(b.delegations.verify(third, A)), "unauthenticated");

  // The first two expire: their slots are free again; the third is still remembered.
  a.clock.advance((DEFAULT_DELEGATION_OPTIONS.ttlSeconds - 15 + 1) * 1000);
  b.clock.advance((DEFAULT_DELEGATION_OPTIONS.ttlSeconds - 15 + 1) * 1000);
  t.is(await refusal(b.delegations.verify(await issue(), A)), "accepted");
  t.is(await refusal(b.delegations.verify(await issue(), A)), "accepted");
  t.is(await refusal(b.delegations.verify(await issue(), A)), "resource-exhausted");
  t.is(await refusal(b.delegations.verify(third, A)), "unauthenticated", "still remembered until it expires");
  // A forgotten (expired) delegation is refused as expired, never accepted again.
  t.is(await refusal(b.delegations.verify(first, A)), "unauthenticated");
});
