import { execFile } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import test from "ava";
import Database from "better-sqlite3";
import pino from "pino";
import { AgentRegistryService } from "../../gen/nops/kernel/v1/agent_registry_pb.js";
import { AuditService } from "../../gen/nops/kernel/v1/audit_pb.js";
import { fileVerifierKeys } from "../../src/audit/signer.js";
import { openCheckpoint } from "../../src/audit/checkpoint.js";
import { parseVerifierKey } from "../../src/audit/signer.js";
import { resolveWitnessOptions } from "../../src/witness/witness-options.js";
import { startWitness } from "../../src/witness/witness-service.js";
import { startNatsTopology } from "../helpers/nats-servers.js";
import { startTestKernel } from "../helpers/kernel.js";
import { waitFor } from "../helpers/processes.js";

const run = promisify(execFile);
const root = new URL("../..", import.meta.url).pathname;

test("witness at the hub - checkpoints travel edge outbox -> leaf -> hub stream -> witness, which serves the latest to audit verify", async (t) => {
  const topo = await startNatsTopology({ edgeDomain: "edge-w" });
  t.teardown(() => topo.destroy());
  const k = await startTestKernel(t, {
    edgeId: "edge-w",
    nats: { url: topo.leaf.url },
    events: {
      natsUser: topo.kernelUser.user,
      natsPassword: topo.kernelUser.pass,
      edgeDomain: topo.edgeDomain,
      confirmIntervalMs: 200,
    },
    audit: { checkpointIntervalMs: 0 },
  });
  const registry = k.client(AgentRegistryService, "grpc-js");
  const audit = k.client(AuditService, "grpc-js");
  const origin = "nops.kernel/edge-w/audit";
  const keys = fileVerifierKeys({ path: join(`${k.dir}.keys`, "audit-checkpoint.key"), name: origin });

  const work = mkdtempSync(join(tmpdir(), "nops-witness-hub-"));
  t.teardown(() => rmSync(work, { recursive: true, force: true }));
  const witness = await startWitness(
    resolveWitnessOptions({
      stateFile: join(work, "state.json"),
      http: { host: "127.0.0.1", port: 0 },
      nats: { url: topo.hub.url, user: topo.hubUser.user, pass: topo.hubUser.pass },
      retryMs: 200,
      edges: { "edge-w": { keys } },
    }),
    { logger: pino({ level: "silent" }) },
  );
  t.teardown(() => witness.close());

  const register = async (name: string) =>
    registry.registerAgent({ tenant: "acme", name, version: "1", endpoint: "grpc://a.acme.svc:7000" });
  for (const name of ["a", "b", "c"]) await register(name);
  const first = await audit.getCheckpoint({ fresh: true });
  for (const name of ["d", "e"]) await register(name);
  const second = await audit.getCheckpoint({ fresh: true });
  t.true(second.treeSize > first.treeSize);

  await waitFor(
    () => witness.witness.latest("edge-w")?.size === Number(second.treeSize),
    "the witness holds the newest checkpoint",
    60_000,
  );
  const held = witness.witness.latest("edge-w")!;
  t.is(held.note, second.checkpoint);

  // The HTTP endpoint serves the signed note; an unknown edge is 404.
  const res = await fetch(`${witness.url}/v1/checkpoints/edge-w`);
  t.is(res.status, 200);
  const note = await res.text();
  t.is(
    openCheckpoint(
      note,
      keys.map((key) => parseVerifierKey(key)),
      origin,
    ).size,
    Number(second.treeSize),
  );
  t.is((await fetch(`${witness.url}/v1/checkpoints/edge-x`)).status, 404);

  // The proofs AuditService serves check out against the checkpoint.
  const proof = await audit.getConsistencyProof({ first: first.treeSize, second: second.treeSize });
  t.true(proof.hashes.length > 0);

  await k.kernel.stop();
  const env = { ...process.env, NOPS_DATA_DIR: k.dir, NOPS_LOG_LEVEL: "silent", NOPS_EDGE_ID: "edge-w" };
  const cli = ["--import", "tsx", join(root, "src/cli.ts"), "audit", "verify", "--checkpoint", witness.url];
  const ok = await run(process.execPath, cli, { env, encoding: "utf8", timeout: 120_000 });
  t.regex(ok.stdout, /audit log intact: \d+ rows verified, consistent with the checkpoint from http/);

  // The tail deleted and the head rewound: the witness's checkpoint still commits to the old size.
  const db = new Database(join(k.dir, "kernel.db"));
  const last = db.prepare("SELECT seq, hash FROM audit_log WHERE seq = 2").get() as { seq: number; hash: string };
  db.prepare("DELETE FROM audit_log WHERE seq > 2").run();
  db.prepare("UPDATE audit_head SET seq = ?, hash = ?").run(last.seq, last.hash);
  db.prepare("DELETE FROM audit_tree").run();
  db.close();
  const bad = await run(process.execPath, cli, { env, encoding: "utf8", timeout: 120_000 }).then(
    () => undefined,
    (e: { code: number; stdout: string }) => e,
  );
  t.is(bad?.code, 1);
  t.regex(
    bad?.stdout ?? "",
    /TAMPERED at row 3: the log holds 2 rows but a checkpoint held outside the edge commits to/,
  );
});
