import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync, chmodSync, mkdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import test, { type ExecutionContext } from "ava";
import { createManualClock } from "../../src/common/clock.js";
import { ConfigError } from "../../src/common/errors.js";
import { openDatabase } from "../../src/store/database.js";
import { migrateUp } from "../../src/store/migrator.js";
import { MIGRATIONS } from "../../src/store/migrations/index.js";
import { createAuditLog, type AuditLog } from "../../src/audit/audit-log.js";
import { openCheckpoint, signCheckpoint, CheckpointError } from "../../src/audit/checkpoint.js";
import {
  encodeVerifierKey,
  fileVerifierKeys,
  generateSigner,
  openFileSigner,
  parseVerifierKey,
  rotateFileSigner,
  type Signer,
} from "../../src/audit/signer.js";
import { createWitness } from "../../src/witness/witness.js";
import { resolveWitnessOptions } from "../../src/witness/witness-options.js";

const ORIGIN = "nops.kernel/edge-1/audit";

function tempDir(t: ExecutionContext): string {
  const dir = mkdtempSync(join(tmpdir(), "nops-witness-"));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

function growingLog(actor = "a"): { audit: AuditLog; grow: (n: number) => void } {
  const db = openDatabase({ path: ":memory:" });
  migrateUp(db, MIGRATIONS);
  const audit = createAuditLog(db, createManualClock());
  let i = 0;
  const grow = (n: number) => {
    for (let k = 0; k < n; k++) audit.append({ actor, action: "x", tenant: "t", resource: `r/${i++}`, outcome: "ok" });
  };
  return { audit, grow };
}

async function checkpointOf(audit: AuditLog, signer: Signer, origin = ORIGIN) {
  const { size, root } = audit.head();
  return signCheckpoint({ origin, size, root }, [signer]);
}

test("checkpoint - the note is a C2SP tlog-checkpoint with an Ed25519 signed-note signature", async (t) => {
  const { audit, grow } = growingLog();
  grow(3);
  const signer = generateSigner(ORIGIN);
  const c = await checkpointOf(audit, signer);
  const lines = c.note.split("\n");
  t.is(lines[0], ORIGIN);
  t.is(lines[1], "3");
  t.is(Buffer.from(lines[2]!, "base64").length, 32);
  t.is(lines[3], "");
  t.regex(lines[4]!, new RegExp(`^\u2014 ${ORIGIN.replace(/[./]/g, "\\$&")} [A-Za-z0-9+/]+=*$`));
  // key id || signature: 4 + 64 bytes.
  t.is(Buffer.from(lines[4]!.split(" ")[2]!, "base64").length, 68);
  const key = parseVerifierKey(encodeVerifierKey(signer.name, signer.publicKey));
  t.is(openCheckpoint(c.note, [key], ORIGIN).size, 3);
  t.throws(() => openCheckpoint(c.note.replace("\n3\n", "\n4\n"), [key]), {
    instanceOf: CheckpointError,
    message: /does not verify/,
  });
  t.throws(
    () => openCheckpoint(c.note, [parseVerifierKey(encodeVerifierKey(ORIGIN, generateSigner(ORIGIN).publicKey))]),
    {
      instanceOf: CheckpointError,
      message: /no signature by a trusted key/,
    },
  );
  t.throws(() => openCheckpoint(c.note, [key], "nops.kernel/other/audit"), { message: /expected/ });
  t.throws(() => openCheckpoint("nops\n1\n", [key]), { message: /not a signed note/ });
});

test("witness - keeps the newest checkpoint that extends the held one and refuses rewinds, forks and bad proofs", async (t) => {
  const dir = tempDir(t);
  const signer = generateSigner(ORIGIN);
  const edges = { "edge-1": { origin: ORIGIN, keys: [encodeVerifierKey(signer.name, signer.publicKey)] } };
  const stateFile = join(dir, "state.json");
  const witness = createWitness({ stateFile, edges });
  const { audit, grow } = growingLog();
  grow(4);
  const c4 = await checkpointOf(audit, signer);
  t.true(witness.submit("edge-1", { checkpoint: c4.note, previousTreeSize: 0, consistencyProof: [] }).accepted);
  grow(3);
  const c7 = await checkpointOf(audit, signer);
  const proof47 = audit.consistencyProof(4, 7);
  const bad = proof47.map((h, i) => (i === 0 ? new Uint8Array(32) : h));
  t.like(witness.submit("edge-1", { checkpoint: c7.note, previousTreeSize: 4, consistencyProof: bad }), {
    accepted: false,
    reason: "the consistency proof from 4 to 7 does not verify: the log was rewritten",
  });
  t.like(witness.submit("edge-1", { checkpoint: c7.note, previousTreeSize: 3, consistencyProof: proof47 }), {
    accepted: false,
    reason: "the proof starts at tree size 3, the held checkpoint is at 4",
  });
  t.true(witness.submit("edge-1", { checkpoint: c7.note, previousTreeSize: 4, consistencyProof: proof47 }).accepted);
  t.is(witness.latest("edge-1")?.size, 7);
  // A replay of the same checkpoint is fine; an older one is a rewind.
  t.true(witness.submit("edge-1", { checkpoint: c7.note, previousTreeSize: 4, consistencyProof: proof47 }).accepted);
  t.like(witness.submit("edge-1", { checkpoint: c4.note, previousTreeSize: 0, consistencyProof: [] }), {
    accepted: false,
    reason: "tree size 4 is below the held checkpoint's 7: the log was rewound",
  });
  // Another log of the same size, signed with the edge's key: a fork.
  const other = growingLog("mallory");
  other.grow(7);
  const fork = await checkpointOf(other.audit, signer);
  t.like(witness.submit("edge-1", { checkpoint: fork.note, previousTreeSize: 7, consistencyProof: [] }), {
    accepted: false,
    reason: "a different root at the held tree size 7: the log was forked",
  });
  // Signed by a key not pinned, of another origin, or of an edge not followed.
  const stranger = await checkpointOf(audit, generateSigner(ORIGIN));
  t.like(witness.submit("edge-1", { checkpoint: stranger.note, previousTreeSize: 7, consistencyProof: [] }), {
    accepted: false,
    reason: "the checkpoint carries no signature by a trusted key",
  });
  const otherOrigin = await checkpointOf(audit, signer, "nops.kernel/edge-2/audit");
  t.false(
    witness.submit("edge-1", { checkpoint: otherOrigin.note, previousTreeSize: 7, consistencyProof: [] }).accepted,
  );
  t.like(witness.submit("edge-9", { checkpoint: c7.note, previousTreeSize: 0, consistencyProof: [] }), {
    accepted: false,
    reason: "edge edge-9 is not witnessed here",
  });
  // The held checkpoint survives a restart of the witness.
  t.is(createWitness({ stateFile, edges }).latest("edge-1")?.note, c7.note);
  t.is(
    (JSON.parse(readFileSync(stateFile, "utf8")) as { edges: Record<string, { size: number }> }).edges["edge-1"]?.size,
    7,
  );
});

test("signer - the file signer keeps a 0600 key outside the data directory; rotation keeps old checkpoints verifiable", async (t) => {
  const dir = tempDir(t);
  const dataDir = join(dir, "data");
  mkdirSync(dataDir);
  mkdirSync(join(dir, "keys"), { mode: 0o700 });
  const path = join(dir, "keys", "audit.key");
  t.throws(() => openFileSigner({ path: join(dataDir, "audit.key"), name: ORIGIN, forbiddenDir: dataDir }), {
    instanceOf: ConfigError,
    message: /must be outside the data directory/,
  });
  const signer = openFileSigner({ path, name: ORIGIN, forbiddenDir: dataDir });
  t.is(statSync(path).mode & 0o777, 0o600);
  t.deepEqual(openFileSigner({ path, name: ORIGIN }).publicKey, signer.publicKey, "the same key on reopen");
  t.throws(() => openFileSigner({ path, name: "other" }), { message: /is named/ });
  chmodSync(path, 0o644);
  t.throws(() => openFileSigner({ path, name: ORIGIN }), { message: /mode 644: it must be 0600/ });
  chmodSync(path, 0o600);
  writeFileSync(join(dir, "keys", "garbage.key"), "hello\n", { mode: 0o600 });
  t.throws(() => openFileSigner({ path: join(dir, "keys", "garbage.key"), name: ORIGIN }), {
    message: /not a signing key/,
  });

  const { audit, grow } = growingLog();
  grow(2);
  const before = await checkpointOf(audit, signer);
  const rotated = rotateFileSigner({ path, name: ORIGIN });
  const after = openFileSigner({ path, name: ORIGIN });
  t.notDeepEqual(after.publicKey, signer.publicKey);
  t.is(rotated.current, encodeVerifierKey(ORIGIN, after.publicKey));
  const keys = fileVerifierKeys({ path, name: ORIGIN });
  t.deepEqual(keys, [rotated.current, rotated.retired]);
  const verifiers = keys.map((k) => parseVerifierKey(k));
  grow(1);
  const later = await checkpointOf(audit, after);
  t.is(openCheckpoint(before.note, verifiers, ORIGIN).size, 2, "a checkpoint of the retired key still verifies");
  t.is(openCheckpoint(later.note, verifiers, ORIGIN).size, 3);
  t.throws(() => openCheckpoint(before.note, [parseVerifierKey(rotated.current)]), {
    message: /no signature by a trusted key/,
  });
});

test("witness options - edges need pinned, well-formed keys; bad input names the field", (t) => {
  const key = encodeVerifierKey(ORIGIN, generateSigner(ORIGIN).publicKey);
  const ok = resolveWitnessOptions({
    stateFile: "/tmp/x.json",
    nats: { url: "nats://127.0.0.1:4222" },
    edges: { "edge-1": { keys: [key] } },
  });
  t.like(ok.edges["edge-1"], { origin: ORIGIN, stream: "NOPS_EDGE_EDGE_1", tenant: "system" });
  t.throws(
    () => resolveWitnessOptions({ stateFile: "/x", nats: { url: "nats://h:1" }, edges: { "edge-1": { keys: [] } } }),
    {
      message: "witness.edges.edge-1.keys must pin at least one verifier key",
    },
  );
  t.throws(
    () =>
      resolveWitnessOptions({ stateFile: "/x", nats: { url: "nats://h:1" }, edges: { "edge-1": { keys: ["a+b+c"] } } }),
    { message: /witness\.edges\.edge-1\.keys\[0\]: verifier key a: the key is not a base64 Ed25519 key/ },
  );
  t.throws(() => resolveWitnessOptions({ nats: { url: "nats://h:1" }, edges: { "edge-1": { keys: [key] } } }), {
    message: "witness.stateFile is required",
  });
});
