// Offline bundles: made from a signed release, verified by a pinned key (or one it rotated to,
// signed offline by the old key), installed and started inside a network namespace with no network.
import { execFile, execFileSync } from "node:child_process";
import { appendFileSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import test, { type ExecutionContext } from "ava";
import { encodeVerifierKey, generateSigner, parseVerifierKey, type Signer } from "../../src/audit/index.js";
import {
  BUNDLE_FILES,
  createBundle,
  installBundle,
  signKeyRotation,
  signRelease,
  verifyBundle,
} from "../../src/release/index.js";
import { makeKernelTree } from "./release-fixture.js";

const root = new URL("../..", import.meta.url).pathname;
const pin = (s: Signer) => parseVerifierKey(encodeVerifierKey(s.name, s.publicKey));

function tempDir(t: ExecutionContext, prefix: string): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

async function bundleOf(
  t: ExecutionContext,
  kernel: string,
  signer: Signer,
  rotations = [] as Awaited<ReturnType<typeof signKeyRotation>>[],
) {
  const releaseDir = tempDir(t, "nops-bundle-release-");
  await signRelease({
    root: kernel,
    outDir: releaseDir,
    signer,
    kernelVersion: "0.0.1",
    builderId: "test",
    sourceCommit: "d".repeat(40),
  });
  const out = tempDir(t, "nops-bundle-");
  await createBundle({ root: kernel, releaseDir, out, signer, kernelVersion: "0.0.1", rotations });
  return out;
}

test("bundle - verifies with the pinned key; a changed archive or an unknown key is refused", async (t) => {
  const kernel = makeKernelTree();
  t.teardown(() => rmSync(kernel, { recursive: true, force: true }));
  const signer = generateSigner("bundle-release");
  const bundle = await bundleOf(t, kernel, signer);
  t.is(verifyBundle(bundle, [pin(signer)]).index.kernelVersion, "0.0.1");
  t.throws(() => verifyBundle(bundle, [pin(generateSigner("bundle-release"))]), {
    message: /signed by a key this kernel does not trust/,
  });
  appendFileSync(join(bundle, BUNDLE_FILES.archive), "x");
  t.throws(() => verifyBundle(bundle, [pin(signer)]), { message: "kernel.tar.gz: differs from what was signed" });
});

test("bundle - installs offline: the extracted release verifies and release.yaml pins the key", async (t) => {
  const kernel = makeKernelTree();
  t.teardown(() => rmSync(kernel, { recursive: true, force: true }));
  const signer = generateSigner("bundle-release");
  const bundle = await bundleOf(t, kernel, signer);
  const target = tempDir(t, "nops-installed-");
  t.is(installBundle(bundle, target, [pin(signer)]).files, 7);
  const yaml = execFileSync("cat", [join(target, "release.yaml")], { encoding: "utf8" });
  t.true(yaml.includes("enforce: true"));
  t.true(yaml.includes(encodeVerifierKey(signer.name, signer.publicKey)));
});

test("bundle - a key rotated offline (new key signed by the old) is trusted; a rotation by another key is not", async (t) => {
  const kernel = makeKernelTree();
  t.teardown(() => rmSync(kernel, { recursive: true, force: true }));
  const old = generateSigner("bundle-release");
  const next = generateSigner("bundle-release");
  const third = generateSigner("bundle-release");
  // A chain old -> next -> third, shipped with a bundle signed by the newest key.
  const chain = [await signKeyRotation(old, pin(next)), await signKeyRotation(next, pin(third))];
  const rotated = await bundleOf(t, kernel, third, chain);
  const { keys } = verifyBundle(rotated, [pin(old)]);
  t.is(keys.length, 3);
  // Without the rotations the newest key is a stranger.
  const bare = await bundleOf(t, kernel, third);
  t.throws(() => verifyBundle(bare, [pin(old)]), { message: /does not trust/ });
  // A rotation signed by a key nobody trusts grants nothing.
  const stranger = generateSigner("bundle-release");
  const forged = await bundleOf(t, kernel, third, [await signKeyRotation(stranger, pin(third))]);
  t.throws(() => verifyBundle(forged, [pin(old)]), { message: /does not trust/ });
});

test("bundle - the real kernel installs and starts inside a network namespace with no network", async (t) => {
  t.timeout(600_000);
  execFileSync(process.execPath, ["scripts/build-if-stale.mjs"], { cwd: root, stdio: "ignore" });
  const signer = generateSigner("bundle-release");
  const bundle = await bundleOf(t, root, signer);
  const target = tempDir(t, "nops-offline-");
  const dataDir = tempDir(t, "nops-offline-data-");
  const config = join(dataDir, "kernel.yaml");
  writeFileSync(
    config,
    [
      `dataDir: ${JSON.stringify(join(dataDir, "data"))}`,
      "grpc: { host: 127.0.0.1, port: 50151 }",
      "http: { host: 127.0.0.1, port: 58180 }",
      "identity: { source: none }",
      'nats: { leaf: "off" }',
      "",
    ].join("\n"),
  );
  const key = encodeVerifierKey(signer.name, signer.publicKey);
  // Inside the namespace only loopback exists: install, merge release.yaml, start, probe /healthz.
  const script = `
    set -eu
    ip link set lo up
    ! getent hosts registry.npmjs.org >/dev/null 2>&1 || ! timeout 3 bash -c 'exec 3<>/dev/tcp/registry.npmjs.org/443' 2>/dev/null
    node ${root}/dist/src/cli.js bundle install --dir ${bundle} --target ${target} --trusted-key '${key}'
    cat ${target}/release.yaml >> ${config}
    node ${target}/dist/src/cli.js serve --config ${config} > ${dataDir}/kernel.log 2>&1 &
    pid=$!
    for i in $(seq 1 300); do
      if node -e "fetch('http://127.0.0.1:58180/healthz').then(r => process.exit(r.status === 200 ? 0 : 1), () => process.exit(1))"; then
        echo healthy; kill -TERM $pid; wait $pid || true; exit 0
      fi
      kill -0 $pid 2>/dev/null || { cat ${dataDir}/kernel.log; exit 1; }
      sleep 0.2
    done
    kill -KILL $pid; cat ${dataDir}/kernel.log; exit 1`;
  const run = await promisify(execFile)("unshare", ["-n", "bash", "-c", script], { timeout: 540_000 }).catch(
    (e: { stdout?: string; stderr?: string }) => e,
  );
  t.regex(`${run.stdout ?? ""}`, /installed into .* files verified/, `${run.stdout ?? ""}${run.stderr ?? ""}`);
  t.regex(`${run.stdout ?? ""}`, /^healthy$/m, `${run.stdout ?? ""}${run.stderr ?? ""}`);
});
