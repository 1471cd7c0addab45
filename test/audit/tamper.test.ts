import { execFile } from "node:child_process";
import { createHash } from "node:crypto";
import { cpSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import test from "ava";
import Database from "better-sqlite3";
import { fromBinary } from "@bufbuild/protobuf";
import { AgentRegistryService } from "../../gen/nops/kernel/v1/agent_registry_pb.js";
import { AuditService } from "../../gen/nops/kernel/v1/audit_pb.js";
import { EventEnvelopeSchema } from "../../gen/nops/events/v1/envelope_pb.js";
import { AuditCheckpointIssuedSchema } from "../../gen/nops/events/v1/audit_events_pb.js";
import { fileVerifierKeys } from "../../src/audit/signer.js";
import { createAuditLog } from "../../src/audit/audit-log.js";
import { systemClock } from "../../src/common/clock.js";
import { createWitness } from "../../src/witness/witness.js";
import { startTestKernel } from "../helpers/kernel.js";

const run = promisify(execFile);
const root = new URL("../..", import.meta.url).pathname;

async function verify(dataDir: string, args: string[]): Promise<{ code: number; out: string }> {
  try {
    const { stdout, stderr } = await run(
      process.execPath,
      ["--import", "tsx", join(root, "src/cli.ts"), "audit", "verify", ...args],
      {
        env: { ...process.env, NOPS_DATA_DIR: dataDir, NOPS_LOG_LEVEL: "silent" },
        encoding: "utf8",
        timeout: 120_000,
      },
    );
    return { code: 0, out: stdout + stderr };
  } catch (e) {
    const err = e as { code: number; stdout: string; stderr: string };
    return { code: err.code, out: err.stdout + err.stderr };
  }
}

interface AuditRow {
  seq: number;
  at: number;
  actor: string;
  action: string;
  tenant: string;
  resource: string;
  outcome: string;
  details: string;
  correlation_id: string;
  prev_hash: string;
  hash: string;
}

// What an attacker with write access to the database can do: recompute every chain hash and the head.
function rehashChain(db: Database.Database): void {
  let prev = "0".repeat(64);
  const rows = db.prepare("SELECT * FROM audit_log ORDER BY seq").all() as AuditRow[];
  const update = db.prepare("UPDATE audit_log SET prev_hash = ?, hash = ? WHERE seq = ?");
  for (const r of rows) {
    const canonical = JSON.stringify([
      r.seq,
      r.at,
      r.actor,
      r.action,
      r.tenant,
      r.resource,
      r.outcome,
      r.details,
      r.correlation_id,
      prev,
    ]);
    const hash = createHash("sha256").update(canonical).digest("hex");
    update.run(prev, hash, r.seq);
    prev = hash;
  }
  db.prepare("DELETE FROM audit_head").run();
  if (rows.length) db.prepare("INSERT INTO audit_head (id, seq, hash) VALUES (1, ?, ?)").run(rows.at(-1)!.seq, prev);
  // ... and rebuild the Merkle tree and drop the edge's own checkpoints, which would give it away.
  db.prepare("DELETE FROM audit_tree").run();
  db.prepare("DELETE FROM audit_checkpoints").run();
}

test("audit tamper - every tampering of a stopped kernel's database is caught by audit verify with the witness's checkpoint", async (t) => {
  // A kernel writes audit rows, signs checkpoints, and stops.
  const k = await startTestKernel(t, { audit: { checkpointIntervalMs: 0 } });
  const registry = k.client(AgentRegistryService, "in-process");
  const auditService = k.client(AuditService, "in-process");
  for (let i = 0; i < 6; i++)
    await registry.registerAgent({
      tenant: "acme",
      name: `agent-${i}`,
      version: "1.0.0",
      endpoint: `127.0.0.1:${50100 + i}`,
      capabilities: [{ name: "summarize", version: "1.0" }],
    });
  const first = await auditService.getCheckpoint({ fresh: true });
  for (let i = 6; i < 11; i++)
    await registry.registerAgent({
      tenant: "acme",
      name: `agent-${i}`,
      version: "1.0.0",
      endpoint: `127.0.0.1:${50100 + i}`,
      capabilities: [{ name: "summarize", version: "1.0" }],
    });
  const second = await auditService.getCheckpoint({ fresh: true });
  t.true(second.treeSize > first.treeSize && first.treeSize >= 6n, `${first.treeSize} then ${second.treeSize}`);
  // Rows after the last checkpoint are allowed: the log only has to extend the witnessed tree.
  await registry.registerAgent({ tenant: "acme", name: "late", version: "1", endpoint: "127.0.0.1:50199" });
  const keyFile = join(`${k.dir}.keys`, "audit-checkpoint.key");
  const origin = "nops.kernel/edge-local/audit";
  const [pinned] = fileVerifierKeys({ path: keyFile, name: origin });
  await k.kernel.stop();

  // The hub's witness receives the checkpoint events the kernel wrote to its outbox, in order.
  const work = mkdtempSync(join(tmpdir(), "nops-tamper-"));
  t.teardown(() => rmSync(work, { recursive: true, force: true }));
  const witness = createWitness({
    stateFile: join(work, "witness.json"),
    edges: { "edge-local": { origin, keys: [pinned!] } },
  });
  const stopped = new Database(join(k.dir, "kernel.db"), { readonly: true });
  const events = (
    stopped.prepare("SELECT envelope FROM outbox WHERE type = 'audit.checkpoint.issued.v1' ORDER BY id").all() as {
      envelope: Buffer;
    }[]
  ).map((r) => fromBinary(AuditCheckpointIssuedSchema, fromBinary(EventEnvelopeSchema, r.envelope).payload));
  stopped.close();
  t.true(events.length >= 2);
  for (const e of events) {
    const verdict = witness.submit("edge-local", {
      checkpoint: e.checkpoint,
      previousTreeSize: Number(e.previousTreeSize),
      consistencyProof: e.consistencyProof,
    });
    t.true(verdict.accepted, verdict.accepted ? "" : verdict.reason);
  }
  const held = witness.latest("edge-local")!;
  t.is(BigInt(held.size), second.treeSize);
  const checkpointFile = join(work, "checkpoint");
  writeFileSync(checkpointFile, held.note);
  const withCheckpoint = ["--checkpoint", checkpointFile, "--key", pinned!];

  const scenario = (name: string, tamper: (db: Database.Database) => void): string => {
    const dir = join(work, name);
    cpSync(k.dir, dir, { recursive: true });
    rmSync(join(dir, "kernel.lock"), { force: true });
    const db = new Database(join(dir, "kernel.db"));
    db.transaction(() => tamper(db))();
    db.close();
    return dir;
  };
  const size = held.size;

  const intact = await verify(
    scenario("intact", () => undefined),
    withCheckpoint,
  );
  t.is(intact.code, 0, intact.out);
  t.regex(intact.out, new RegExp(`intact: ${size + 1} rows verified, consistent with .* \\(tree size ${size}\\)`));

  const edited = await verify(
    scenario("edited", (db) => db.prepare("UPDATE audit_log SET actor = 'mallory' WHERE seq = 3").run()),
    withCheckpoint,
  );
  t.is(edited.code, 1, edited.out);
  t.regex(edited.out, /TAMPERED at row 3: row 3 was modified/);

  const deleted = await verify(
    scenario("deleted", (db) => db.prepare("DELETE FROM audit_log WHERE seq = 4").run()),
    withCheckpoint,
  );
  t.is(deleted.code, 1, deleted.out);
  t.regex(deleted.out, /TAMPERED at row 4: row 4 is missing/);

  // Truncating the tail and rewinding the head (and the tree) leaves a chain that checks out alone...
  const rewind = (db: Database.Database) => {
    db.prepare("DELETE FROM audit_log WHERE seq > 5").run();
    rehashChain(db);
  };
  const truncatedDir = scenario("truncated", rewind);
  t.is((await verify(truncatedDir, [])).code, 0, "the hash chain alone cannot see a rewound head");
  const truncated = await verify(truncatedDir, withCheckpoint);
  t.is(truncated.code, 1, truncated.out);
  t.regex(truncated.out, new RegExp(`TAMPERED at row 6: the log holds 5 rows but a checkpoint .* commits to ${size}`));

  const emptiedDir = scenario("emptied", (db) => {
    db.prepare("DELETE FROM audit_log").run();
    rehashChain(db);
  });
  t.regex((await verify(emptiedDir, [])).out, /intact: 0 rows/, "the hash chain alone calls an empty log intact");
  const emptied = await verify(emptiedDir, withCheckpoint);
  t.is(emptied.code, 1, emptied.out);
  t.regex(emptied.out, new RegExp(`TAMPERED at row 1: the log holds 0 rows but a checkpoint .* commits to ${size}`));

  const forgedDir = scenario("forged", (db) => {
    db.prepare("UPDATE audit_log SET actor = 'mallory', outcome = 'ok' WHERE seq = 2").run();
    db.prepare(
      `INSERT INTO audit_log VALUES (100, 1, 'mallory', 'agent.register', 'acme', 'agent/x', 'ok', '{}', '', '', '')`,
    ).run();
    db.prepare("UPDATE audit_log SET seq = seq + 1000 WHERE seq >= 3").run();
    const moved = db.prepare("SELECT seq FROM audit_log WHERE seq > 1000 ORDER BY seq").all() as { seq: number }[];
    moved.forEach((r, i) => db.prepare("UPDATE audit_log SET seq = ? WHERE seq = ?").run(3 + i, r.seq));
    rehashChain(db);
    createAuditLog(db, systemClock).catchUp();
  });
  t.is((await verify(forgedDir, [])).code, 0, "a forged row with a full re-hash passes the chain check");
  const forged = await verify(forgedDir, withCheckpoint);
  t.is(forged.code, 1, forged.out);
  t.regex(forged.out, /TAMPERED at row 1: the first \d+ rows do not hash to the root of the checkpoint/);

  // A checkpoint not signed by the pinned key is refused, whatever it says.
  const other = await verify(
    scenario("other-key", () => undefined),
    ["--checkpoint", checkpointFile, "--key", "someone+00000000+AQ" + "A".repeat(42) + "="],
  );
  t.is(other.code, 2, other.out);
});
