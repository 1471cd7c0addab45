import { appendFileSync, cpSync, mkdtempSync, readFileSync, rmSync, unlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import test from "ava";
import { generateSigner, parseVerifierKey, encodeVerifierKey, type Signer } from "../../src/audit/index.js";
import { RELEASE_FILES, releaseRoots, signRelease, verifyRelease, type DsseEnvelope } from "../../src/release/index.js";
import { makeKernelTree } from "./release-fixture.js";

const trust = (s: Signer) => [parseVerifierKey(encodeVerifierKey(s.name, s.publicKey))];

async function signed(): Promise<{ root: string; dir: string; signer: Signer }> {
  const root = makeKernelTree();
  const dir = mkdtempSync(join(tmpdir(), "nops-release-out-"));
  const signer = generateSigner("test-release");
  await signRelease({
    root,
    outDir: dir,
    signer,
    kernelVersion: "0.0.1",
    builderId: "test",
    sourceCommit: "a".repeat(40),
  });
  return { root, dir, signer };
}

const cleanup = (...dirs: string[]) => dirs.forEach((d) => rmSync(d, { recursive: true, force: true }));

test("release - roots are the built code, contracts, lock file and production dependencies only", (t) => {
  const root = makeKernelTree();
  t.teardown(() => cleanup(root));
  t.deepEqual(releaseRoots(root), [
    "dist/gen",
    "dist/src",
    "node_modules/dep",
    "package-lock.json",
    "package.json",
    "proto",
  ]);
});

test("release - a signed release verifies: manifest, CycloneDX SBOM, in-toto SLSA provenance in DSSE", async (t) => {
  const { root, dir, signer } = await signed();
  t.teardown(() => cleanup(root, dir));
  const result = verifyRelease(root, dir, trust(signer));
  t.deepEqual(result.problems, []);
  t.true(result.ok);
  t.is(result.signedBy, "test-release");
  t.is(result.sourceCommit, "a".repeat(40));
  t.is(result.files, 7);
  const sbom = JSON.parse(readFileSync(join(dir, RELEASE_FILES.sbom), "utf8")) as {
    bomFormat: string;
    components: Array<{ name: string }>;
  };
  t.is(sbom.bomFormat, "CycloneDX");
  t.deepEqual(
    sbom.components.map((c) => c.name),
    ["dep"],
  );
  const envelope = JSON.parse(readFileSync(join(dir, RELEASE_FILES.attestation), "utf8")) as DsseEnvelope;
  t.is(envelope.payloadType, "application/vnd.in-toto+json");
  const statement = JSON.parse(Buffer.from(envelope.payload, "base64").toString("utf8")) as {
    predicateType: string;
    subject: Array<{ name: string }>;
  };
  t.is(statement.predicateType, "https://slsa.dev/provenance/v1");
  t.deepEqual(
    statement.subject.map((s) => s.name),
    [RELEASE_FILES.manifest, RELEASE_FILES.sbom],
  );
});

test("release - a changed, added or removed file is named", async (t) => {
  const { root, dir, signer } = await signed();
  t.teardown(() => cleanup(root, dir));
  appendFileSync(join(root, "dist/src/cli.js"), "process.exit(0);\n");
  writeFileSync(join(root, "node_modules/dep/extra.js"), "evil();\n");
  unlinkSync(join(root, "proto/nops/kernel/v1/x.proto"));
  const result = verifyRelease(root, dir, trust(signer));
  t.false(result.ok);
  t.deepEqual(result.problems.sort(), [
    "dist/src/cli.js: content differs from the release",
    "node_modules/dep/extra.js: not part of the release",
    "proto/nops/kernel/v1/x.proto: missing",
  ]);
});

test("release - an unknown key, a forged signature and an edited manifest are refused", async (t) => {
  const { root, dir, signer } = await signed();
  t.teardown(() => cleanup(root, dir));
  const other = generateSigner("test-release");
  t.regex(verifyRelease(root, dir, trust(other)).problems.join(), /signed by a key this kernel does not trust/);

  const forged = mkdtempSync(join(tmpdir(), "nops-release-forged-"));
  t.teardown(() => cleanup(forged));
  cpSync(dir, forged, { recursive: true });
  const path = join(forged, RELEASE_FILES.attestation);
  const envelope = JSON.parse(readFileSync(path, "utf8")) as DsseEnvelope;
  const statement = Buffer.from(envelope.payload, "base64").toString("utf8").replace("a".repeat(40), "b".repeat(40));
  writeFileSync(path, JSON.stringify({ ...envelope, payload: Buffer.from(statement).toString("base64") }));
  t.regex(verifyRelease(root, forged, trust(signer)).problems.join(), /signature by test-release does not verify/);

  const edited = mkdtempSync(join(tmpdir(), "nops-release-edited-"));
  t.teardown(() => cleanup(edited));
  cpSync(dir, edited, { recursive: true });
  const manifestPath = join(edited, RELEASE_FILES.manifest);
  const manifest = JSON.parse(readFileSync(manifestPath, "utf8")) as { files: Record<string, string> };
  manifest.files["dist/src/cli.js"] = "0".repeat(64);
  writeFileSync(manifestPath, JSON.stringify(manifest));
  t.deepEqual(verifyRelease(root, edited, trust(signer)).problems.slice(0, 1), [
    "manifest.json: differs from what was signed",
  ]);
});

test("release - a lock file other than the one built from is named", async (t) => {
  const { root, dir, signer } = await signed();
  t.teardown(() => cleanup(root, dir));
  appendFileSync(join(root, "package-lock.json"), "\n");
  const problems = verifyRelease(root, dir, trust(signer)).problems;
  t.true(problems.includes("package-lock.json: differs from the lock file the release was built from"));
  t.true(problems.includes("package-lock.json: content differs from the release"));
});

test("release - a missing release directory says which files are missing", (t) => {
  const root = makeKernelTree();
  t.teardown(() => cleanup(root));
  const result = verifyRelease(root, join(root, "release"), trust(generateSigner("k")));
  t.false(result.ok);
  t.regex(result.problems[0] ?? "", /attestation\.dsse\.json: missing from the release directory/);
});
