// The kernel verifies its signed release before it serves (release.enforce): a correct release
// starts; a tampered file, a wrong signature or an unknown key refuses the start; each outcome is
// evidence in the audit log.
import { appendFileSync, mkdtempSync, rmSync, writeFileSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import test, { type ExecutionContext } from "ava";
import { encodeVerifierKey, generateSigner, type Signer } from "../../src/audit/index.js";
import { openDatabase } from "../../src/store/database.js";
import { resolveKernelOptions } from "../../src/kernel/kernel-options.js";
import { startKernel } from "../../src/kernel/index.js";
import { ConfigError } from "../../src/common/index.js";
import { RELEASE_FILES, signRelease, type DsseEnvelope } from "../../src/release/index.js";
import { makeKernelTree } from "./release-fixture.js";

async function signedTree(t: ExecutionContext): Promise<{ root: string; dir: string; signer: Signer }> {
  const root = makeKernelTree();
  const dir = join(root, "release");
  const signer = generateSigner("boot-test-release");
  await signRelease({
    root,
    outDir: dir,
    signer,
    kernelVersion: "0.0.1",
    builderId: "test",
    sourceCommit: "c".repeat(40),
  });
  t.teardown(() => rmSync(root, { recursive: true, force: true }));
  return { root, dir, signer };
}

/** Starts a kernel enforcing the release; returns the audit rows of the check and how the start ended. */
async function boot(t: ExecutionContext, release: Record<string, unknown>) {
  const dataDir = mkdtempSync(join(tmpdir(), "nops-release-boot-"));
  t.teardown(() => {
    rmSync(dataDir, { recursive: true, force: true });
    rmSync(`${dataDir}.keys`, { recursive: true, force: true });
  });
  const options = resolveKernelOptions({
    dataDir,
    grpc: { host: "127.0.0.1", port: 0 },
    http: { host: "127.0.0.1", port: 0 },
    log: { level: "silent" },
    identity: { source: "none" },
    nats: { leaf: "off" },
    release: { enforce: true, ...release },
  });
  let error: unknown;
  try {
    const kernel = await startKernel(options);
    const health = await fetch(`http://127.0.0.1:${kernel.httpPort}/healthz`);
    t.is(health.status, 200);
    await kernel.stop();
  } catch (e) {
    error = e;
  }
  const db = openDatabase({ path: options.databasePath });
  const rows = db
    .prepare("SELECT outcome, details FROM audit_log WHERE action = 'release.verify' ORDER BY seq")
    .all() as Array<{ outcome: string; details: string }>;
  db.close();
  return {
    error,
    rows: rows.map((r) => ({ outcome: r.outcome, details: JSON.parse(r.details) as Record<string, unknown> })),
  };
}

const key = (s: Signer) => encodeVerifierKey(s.name, s.publicKey);

test("release at boot - a correct release starts and its verification is audited", async (t) => {
  const { root, dir, signer } = await signedTree(t);
  const { error, rows } = await boot(t, { root, dir, trustedKeys: [key(signer)] });
  t.is(error, undefined);
  t.is(rows.length, 1);
  t.is(rows[0]?.outcome, "ok");
  t.like(rows[0]?.details, { signedBy: "boot-test-release", sourceCommit: "c".repeat(40), files: 7, problemCount: 0 });
});

test("release at boot - a tampered file refuses the start, naming the file, and is audited", async (t) => {
  const { root, dir, signer } = await signedTree(t);
  appendFileSync(join(root, "dist/src/cli.js"), "exfiltrate();\n");
  const { error, rows } = await boot(t, { root, dir, trustedKeys: [key(signer)] });
  t.true(error instanceof ConfigError);
  t.regex(
    (error as Error).message,
    /release verification failed .*dist\/src\/cli\.js: content differs from the release/,
  );
  t.is(rows[0]?.outcome, "denied");
  t.deepEqual(rows[0]?.details.problems, ["dist/src/cli.js: content differs from the release"]);
});

test("release at boot - a wrong signature refuses the start and is audited", async (t) => {
  const { root, dir, signer } = await signedTree(t);
  const path = join(dir, RELEASE_FILES.attestation);
  const envelope = JSON.parse(readFileSync(path, "utf8")) as DsseEnvelope;
  const sig = Buffer.from(envelope.signatures[0]!.sig, "base64");
  sig[0] = (sig[0] ?? 0) ^ 1;
  writeFileSync(
    path,
    JSON.stringify({ ...envelope, signatures: [{ ...envelope.signatures[0], sig: sig.toString("base64") }] }),
  );
  const { error, rows } = await boot(t, { root, dir, trustedKeys: [key(signer)] });
  t.regex((error as Error).message, /signature by boot-test-release does not verify/);
  t.is(rows[0]?.outcome, "denied");
});

test("release at boot - a release signed by an unknown key refuses the start and is audited", async (t) => {
  const { root, dir } = await signedTree(t);
  const { error, rows } = await boot(t, { root, dir, trustedKeys: [key(generateSigner("boot-test-release"))] });
  t.regex((error as Error).message, /signed by a key this kernel does not trust/);
  t.is(rows[0]?.outcome, "denied");
});

test("release options - enforcing with no trusted key is a configuration error", (t) => {
  t.throws(() => resolveKernelOptions({ release: { enforce: true } }), {
    message: "release.trustedKeys must list at least one key when release.enforce is true",
  });
});
