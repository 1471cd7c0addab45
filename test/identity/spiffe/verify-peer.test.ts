import test, { type ExecutionContext } from "ava";
import { createManualClock, systemClock } from "../../../src/common/clock.js";
import { verifyPeer, PeerVerificationError, type PeerRejectReason } from "../../../src/identity/spiffe/verify-peer.js";
import { createX509Bundle, createX509BundleSet } from "../../../src/identity/spiffe/x509-bundle.js";
import { parseX509Svid, SvidError } from "../../../src/identity/spiffe/x509-svid.js";
import { createTestCa, ExtendedKeyUsage, KeyUsageFlags, unknownExtension, type TestCa } from "../../helpers/test-ca.js";

const ID = "spiffe://nops.test/nops/tenant/acme/agent/a1";

const bundlesOf = (...cas: TestCa[]) =>
  createX509BundleSet(cas.map((ca) => createX509Bundle(ca.trustDomain, ca.certDer)));

async function rejects(t: ExecutionContext, fn: () => unknown, reason: PeerRejectReason, message?: RegExp) {
  const err = t.throws(fn, { instanceOf: PeerVerificationError });
  t.is(err?.reason, reason);
  if (message) t.regex(err?.message ?? "", message);
}

test("verify peer - accepts an SVID from its own trust domain", async (t) => {
  const ca = await createTestCa("nops.test");
  const svid = await ca.issue({ spiffeId: ID });
  const peer = verifyPeer(svid.certificates, bundlesOf(ca), systemClock);
  t.is(peer.spiffeId, ID);
  t.is(peer.trustDomain, "nops.test");
  t.is(peer.path, "/nops/tenant/acme/agent/a1");
});

test("verify peer - accepts a federated peer through its own bundle and an intermediate", async (t) => {
  const ca = await createTestCa("nops.test");
  const partner = await createTestCa("partner.test");
  const inter = await partner.intermediate();
  const svid = await inter.issue({ spiffeId: "spiffe://partner.test/svc" });
  t.is(svid.certificates.length, 2);
  t.is(verifyPeer(svid.certificates, bundlesOf(ca, partner), systemClock).spiffeId, "spiffe://partner.test/svc");
});

test("verify peer - rejects a peer from an unknown trust domain", async (t) => {
  const ca = await createTestCa("nops.test");
  const other = await createTestCa("evil.test");
  const svid = await other.issue({ spiffeId: "spiffe://evil.test/x" });
  await rejects(t, () => verifyPeer(svid.certificates, bundlesOf(ca), systemClock), "unknown-trust-domain");
});

test("verify peer - a bundle only vouches for its own trust domain", async (t) => {
  const ca = await createTestCa("nops.test");
  const partner = await createTestCa("partner.test");
  const svid = await partner.issue({ spiffeId: "spiffe://nops.test/nops/admin/root" });
  await rejects(t, () => verifyPeer(svid.certificates, bundlesOf(ca, partner), systemClock), "untrusted");
});

test("verify peer - rejects two URI SANs, a CA leaf and bad key usage", async (t) => {
  const ca = await createTestCa("nops.test");
  const bundles = bundlesOf(ca);
  const cases: [string, Parameters<TestCa["issue"]>[0], RegExp][] = [
    ["two URI SANs", { uris: [ID, "spiffe://nops.test/other"] }, /exactly one URI SAN/],
    ["no URI SAN", { uris: [] }, /exactly one URI SAN/],
    ["not a SPIFFE ID", { uris: ["https://nops.test/x"] }, /not a valid SPIFFE ID/],
    ["CA leaf", { spiffeId: ID, ca: true }, /is a CA/],
    ["no key usage", { spiffeId: ID, keyUsage: null }, /no key usage/],
    ["non-critical key usage", { spiffeId: ID, keyUsageCritical: false }, /not critical/],
    [
      "keyCertSign",
      { spiffeId: ID, keyUsage: KeyUsageFlags.digitalSignature | KeyUsageFlags.keyCertSign },
      /keyCertSign/,
    ],
    ["no digitalSignature", { spiffeId: ID, keyUsage: KeyUsageFlags.keyEncipherment }, /digitalSignature/],
  ];
  for (const [name, options, message] of cases) {
    const svid = await ca.issue(options);
    const err = t.throws(
      () => verifyPeer(svid.certificates, bundles, systemClock),
      { instanceOf: PeerVerificationError },
      name,
    );
    t.is(err?.reason, "bad-svid", name);
    t.regex(err?.message ?? "", message, name);
    t.throws(() => parseX509Svid({ chain: svid.chainDer, key: svid.keyDer }), { instanceOf: SvidError }, name);
  }
});

test("verify peer - rejects expired and not-yet-valid SVIDs by the clock", async (t) => {
  const ca = await createTestCa("nops.test");
  const svid = await ca.issue({ spiffeId: ID }); // valid now ± 1 h
  const bundles = bundlesOf(ca);
  const clock = createManualClock(Date.now());
  t.is(verifyPeer(svid.certificates, bundles, clock).spiffeId, ID);
  clock.advance(2 * 3600_000);
  await rejects(t, () => verifyPeer(svid.certificates, bundles, clock), "expired");
  clock.advance(-4 * 3600_000);
  await rejects(t, () => verifyPeer(svid.certificates, bundles, clock), "not-yet-valid");
});

test("verify peer - rejects an expired intermediate and an expired trust anchor", async (t) => {
  const now = Date.now();
  const root = await createTestCa("nops.test", { notAfter: new Date(now + 30 * 60_000) });
  const inter = await root.intermediate({ notAfter: new Date(now + 20 * 60_000) });
  const svid = await inter.issue({ spiffeId: ID, notAfter: new Date(now + 3600_000) });
  const clock = createManualClock(now);
  t.is(verifyPeer(svid.certificates, bundlesOf(root), clock).spiffeId, ID);
  clock.advance(25 * 60_000);
  await rejects(t, () => verifyPeer(svid.certificates, bundlesOf(root), clock), "expired", /intermediate/);
  const direct = await root.issue({ spiffeId: ID, notAfter: new Date(now + 3600_000) });
  clock.set(now + 40 * 60_000);
  await rejects(t, () => verifyPeer(direct.certificates, bundlesOf(root), clock), "expired", /trust anchor/);
});

test("verify peer - rejects a chain not signed by the bundle and an empty chain", async (t) => {
  const ca = await createTestCa("nops.test");
  const rogue = await createTestCa("nops.test");
  const svid = await rogue.issue({ spiffeId: ID });
  await rejects(t, () => verifyPeer(svid.certificates, bundlesOf(ca), systemClock), "untrusted");
  await rejects(t, () => verifyPeer([], bundlesOf(ca), systemClock), "bad-svid");
  await rejects(t, () => verifyPeer([Uint8Array.from([1, 2, 3])], bundlesOf(ca), systemClock), "bad-svid");
});

test("x509 svid - rejects a key that does not match the leaf", async (t) => {
  const ca = await createTestCa("nops.test");
  const a = await ca.issue({ spiffeId: ID });
  const b = await ca.issue({ spiffeId: ID });
  t.is(parseX509Svid({ chain: a.chainDer, key: a.keyDer, spiffeId: ID }).spiffeId.id, ID);
  t.throws(() => parseX509Svid({ chain: a.chainDer, key: b.keyDer }), {
    instanceOf: SvidError,
    message: /does not match/,
  });
  t.throws(() => parseX509Svid({ chain: a.chainDer, key: Uint8Array.from([1]) }), { instanceOf: SvidError });
});

test("verify peer - EKU is checked for the peer's role; path length and unknown critical extensions refuse", async (t) => {
  const ca = await createTestCa("nops.test");
  const bundles = bundlesOf(ca);
  const clientOnly = await ca.issue({ spiffeId: ID, extKeyUsages: [ExtendedKeyUsage.clientAuth] });
  t.is(verifyPeer(clientOnly.certificates, bundles, systemClock).spiffeId, ID);
  await rejects(
    t,
    () => verifyPeer(clientOnly.certificates, bundles, systemClock, { role: "server" }),
    "bad-svid",
    /serverAuth/,
  );
  const odd = await ca.issue({ spiffeId: ID, extraExtensions: [unknownExtension(true)] });
  await rejects(t, () => verifyPeer(odd.certificates, bundles, systemClock), "bad-svid", /unknown critical extension/);
  const deep = await (await (await ca.intermediate({ pathLength: 0 })).intermediate()).issue({ spiffeId: ID });
  await rejects(t, () => verifyPeer(deep.certificates, bundles, systemClock), "untrusted", /allows 0 intermediates/);
});
