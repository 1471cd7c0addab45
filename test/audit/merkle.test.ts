import test from "ava";
import { createManualClock } from "../../src/common/clock.js";
import { openDatabase } from "../../src/store/database.js";
import { migrateUp } from "../../src/store/migrator.js";
import { MIGRATIONS } from "../../src/store/migrations/index.js";
import { createAuditLog, type AuditLog } from "../../src/audit/audit-log.js";
import { leafHash, verifyConsistency, verifyInclusion } from "../../src/audit/merkle.js";
import { checkConsistency, checkInclusion, mth, path, proof, refLeafHash } from "./rfc6962-reference.js";

const hex = (b: Uint8Array) => Buffer.from(b).toString("hex");

function logOf(n: number): { audit: AuditLog; leaves: Uint8Array[] } {
  const db = openDatabase({ path: ":memory:" });
  migrateUp(db, MIGRATIONS);
  const audit = createAuditLog(db, createManualClock());
  for (let i = 0; i < n; i++)
    audit.append({ actor: `a${i}`, action: "test.append", tenant: "t", resource: `r/${i}`, outcome: "ok" });
  return { audit, leaves: audit.entries(0, n).map((e) => e.leaf) };
}

// RFC 6962 test vectors (certificate-transparency's merkle tree tests): 8 leaves and the root of each prefix.
const VECTOR_LEAVES = [
  "",
  "00",
  "10",
  "2021",
  "3031",
  "40414243",
  "5051525354555657",
  "606162636465666768696a6b6c6d6e6f",
];
const VECTOR_ROOTS = [
  "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
  "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
  "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
  "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
  "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
  "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
  "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
  "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
];

test("reference - the independent reference reproduces the RFC 6962 test vectors", (t) => {
  const leaves = VECTOR_LEAVES.map((h) => Buffer.from(h, "hex"));
  t.is(hex(mth([])), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  VECTOR_ROOTS.forEach((root, i) => t.is(hex(mth(leaves.slice(0, i + 1))), root, `size ${i + 1}`));
});

const MAX = 40;

test("merkle - roots of every prefix match MTH, including the empty tree", (t) => {
  const { audit, leaves } = logOf(MAX);
  for (let n = 0; n <= MAX; n++) t.is(hex(audit.rootAt(n)), hex(mth(leaves.slice(0, n))), `size ${n}`);
  t.is(hex(audit.head().root), hex(mth(leaves)));
});

test("merkle - inclusion proofs equal PATH(m, D[n]) and verify with the independent verifier", (t) => {
  const { audit, leaves } = logOf(MAX);
  for (let n = 1; n <= MAX; n++) {
    const root = mth(leaves.slice(0, n));
    for (let m = 0; m < n; m++) {
      const p = audit.inclusionProof(m, n);
      t.deepEqual(p.map(hex), path(m, leaves.slice(0, n)).map(hex), `PATH(${m}, D[${n}])`);
      t.true(checkInclusion(m, n, refLeafHash(leaves[m]!), p, root), `verify ${m} in ${n}`);
      t.true(verifyInclusion(leafHash(leaves[m]!), m, n, p, root));
    }
  }
  t.throws(() => audit.inclusionProof(0, 0), { instanceOf: RangeError });
  t.throws(() => audit.inclusionProof(3, MAX + 1), { instanceOf: RangeError });
});

test("merkle - consistency proofs equal PROOF(m, D[n]) for sizes 0, 1, powers of two and the rest", (t) => {
  const { audit, leaves } = logOf(MAX);
  for (let n = 0; n <= MAX; n++) {
    const second = mth(leaves.slice(0, n));
    for (let m = 0; m <= n; m++) {
      const first = mth(leaves.slice(0, m));
      const p = audit.consistencyProof(m, n);
      t.deepEqual(p.map(hex), proof(m, leaves.slice(0, n)).map(hex), `PROOF(${m}, D[${n}])`);
      t.true(checkConsistency(m, n, first, second, p), `reference verifies ${m} -> ${n}`);
      t.true(verifyConsistency(m, first, n, second, p), `kernel verifies ${m} -> ${n}`);
    }
  }
  t.throws(() => audit.consistencyProof(5, 4), { instanceOf: RangeError });
});

test("merkle - the kernel's verifiers refuse altered proofs, wrong roots and wrong indexes", (t) => {
  const { leaves } = logOf(13);
  const all = leaves;
  for (const [m, n] of [
    [1, 2],
    [3, 7],
    [4, 8],
    [6, 13],
    [8, 13],
  ] as const) {
    const first = mth(all.slice(0, m));
    const second = mth(all.slice(0, n));
    const p = proof(m, all.slice(0, n));
    t.true(verifyConsistency(m, first, n, second, p));
    t.false(verifyConsistency(m, first, n, mth(all.slice(0, n - 1)), p), "wrong second root");
    t.false(verifyConsistency(m, mth(all.slice(0, m - 1)), n, second, p), "wrong first root");
    t.false(verifyConsistency(m, first, n, second, p.slice(1)), "shortened proof");
    t.false(verifyConsistency(m, first, n, second, [...p, p[0]!]), "lengthened proof");
    const flipped = p.map((h, i) => (i === 0 ? Buffer.from(h).map((b, j) => (j === 0 ? b ^ 1 : b)) : h));
    t.false(verifyConsistency(m, first, n, second, flipped), "altered hash");
    t.false(checkConsistency(m, n, first, second, flipped), "the reference agrees");
  }
  t.true(verifyConsistency(0, mth([]), 5, mth(all.slice(0, 5)), []), "the empty tree is a prefix of every tree");
  t.false(verifyConsistency(0, mth([]), 5, mth(all.slice(0, 5)), [mth([])]), "size 0 takes no proof");
  t.false(verifyConsistency(5, mth(all.slice(0, 5)), 4, mth(all.slice(0, 4)), []), "shrinking is never consistent");
  t.false(verifyConsistency(4, mth(all.slice(0, 4)), 4, mth(all.slice(0, 5)), []), "same size, other root");
  const root = mth(all.slice(0, 9));
  const p = path(4, all.slice(0, 9));
  t.true(verifyInclusion(refLeafHash(all[4]!), 4, 9, p, root));
  t.false(verifyInclusion(refLeafHash(all[5]!), 4, 9, p, root), "other leaf");
  t.false(verifyInclusion(refLeafHash(all[4]!), 5, 9, p, root), "other index");
  t.false(verifyInclusion(refLeafHash(all[4]!), 9, 9, p, root), "index beyond the tree");
  t.false(verifyInclusion(Buffer.from(all[4]!), 4, 9, p, root), "a leaf without the 0x00 domain prefix");
});

test("merkle - an append writes O(log n) nodes: the tree holds fewer than 2n nodes", (t) => {
  const db = openDatabase({ path: ":memory:" });
  migrateUp(db, MIGRATIONS);
  const audit = createAuditLog(db, createManualClock());
  for (let i = 0; i < 100; i++) audit.append({ actor: "a", action: "x", tenant: "t", resource: "r", outcome: "ok" });
  const { n } = db.prepare<[], { n: number }>("SELECT count(*) AS n FROM audit_tree").get()!;
  // 100 leaves + the complete subtrees above them (50 + 25 + 12 + 6 + 3 + 1).
  t.is(n, 197);
});
