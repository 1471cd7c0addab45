import { execFileSync } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { Signer, VerifierKey } from "../audit/index.js";
import { IN_TOTO_PAYLOAD_TYPE, openEnvelope, signEnvelope, type DsseEnvelope } from "./dsse.js";
import { buildManifest, checkManifest, parseManifest, releaseRoots, sha256Hex } from "./release-manifest.js";
import { kernelRoot } from "./release-options.js";

/** The files of a release directory. */
export const RELEASE_FILES = {
  manifest: "manifest.json",
  sbom: "sbom.cdx.json",
  attestation: "attestation.dsse.json",
} as const;

/** The SLSA build type of a kernel release made by `nops-kernel release sign`. */
export const BUILD_TYPE = "https://nops.dev/kernel/release-sign/v1";

/** What `release sign` needs. */
export interface SignReleaseOptions {
  /** The kernel's root directory (package.json, dist/, node_modules/). */
  root: string;
  /** Where the release files are written. */
  outDir: string;
  signer: Signer;
  kernelVersion: string;
  /** The builder's identity in the provenance (e.g. the CI job's URI). */
  builderId: string;
  /** The source commit; read from git in `root` when not given. */
  sourceCommit?: string;
  /** The source repository URI; git's origin when not given. */
  sourceUri?: string;
  now?: () => Date;
}

function git(root: string, args: string[]): string | undefined {
  try {
    return execFileSync("git", args, { cwd: root, encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] }).trim();
  } catch {
    return undefined;
  }
}

/**
 * The CycloneDX SBOM of the production dependency tree, from `@cyclonedx/cyclonedx-npm` (a
 * development dependency: the release is signed where the build happens, not where it runs).
 */
function buildSbom(root: string, outFile: string): void {
  const cli = join(kernelRoot(), "node_modules/@cyclonedx/cyclonedx-npm/bin/cyclonedx-npm-cli.js");
  if (!existsSync(cli))
    throw new Error("@cyclonedx/cyclonedx-npm is not installed: run npm ci (with dev dependencies)");
  execFileSync(
    process.execPath,
    [
      cli,
      "--omit",
      "dev",
      "--no-workspaces",
      "--output-format",
      "JSON",
      "--output-reproducible",
      "--output-file",
      outFile,
    ],
    { cwd: root, stdio: ["ignore", "ignore", "pipe"] },
  );
}

/**
 * Signs a release: the manifest of every file the kernel runs, the SBOM, and an in-toto
 * statement with SLSA provenance naming both as subjects, wrapped in DSSE and signed.
 */
export async function signRelease(options: SignReleaseOptions): Promise<{ statement: InTotoStatement }> {
  const startedOn = (options.now ?? (() => new Date()))().toISOString();
  const { root, outDir } = options;
  const commit = options.sourceCommit ?? git(root, ["rev-parse", "HEAD"]);
  if (!commit) throw new Error("the source commit is unknown: sign inside the git checkout or pass it");
  const uri = options.sourceUri ?? git(root, ["remote", "get-url", "origin"]) ?? `file://${root}`;
  mkdirSync(outDir, { recursive: true });
  const manifest = buildManifest(root, releaseRoots(root), options.kernelVersion);
  const manifestText = JSON.stringify(manifest, null, 1) + "\n";
  writeFileSync(join(outDir, RELEASE_FILES.manifest), manifestText);
  buildSbom(root, join(outDir, RELEASE_FILES.sbom));
  const statement: InTotoStatement = {
    _type: "https://in-toto.io/Statement/v1",
    subject: [
      { name: RELEASE_FILES.manifest, digest: { sha256: sha256Hex(manifestText) } },
      { name: RELEASE_FILES.sbom, digest: { sha256: sha256Hex(readFileSync(join(outDir, RELEASE_FILES.sbom))) } },
    ],
    predicateType: "https://slsa.dev/provenance/v1",
    predicate: {
      buildDefinition: {
        buildType: BUILD_TYPE,
        externalParameters: { source: { uri, digest: { gitCommit: commit } } },
        internalParameters: {
          node: process.version,
          kernelVersion: options.kernelVersion,
          // Files changed since the commit are in the manifest but not in the commit.
          sourceTreeClean: String(
            options.sourceCommit !== undefined || git(root, ["status", "--porcelain", "--untracked-files=no"]) === "",
          ),
        },
        resolvedDependencies: [
          { name: "package-lock.json", digest: { sha256: sha256Hex(readFileSync(join(root, "package-lock.json"))) } },
        ],
      },
      runDetails: {
        builder: { id: options.builderId },
        metadata: { startedOn, finishedOn: (options.now ?? (() => new Date()))().toISOString() },
      },
    },
  };
  const envelope = await signEnvelope(
    IN_TOTO_PAYLOAD_TYPE,
    Buffer.from(JSON.stringify(statement), "utf8"),
    options.signer,
  );
  writeFileSync(join(outDir, RELEASE_FILES.attestation), JSON.stringify(envelope, null, 1) + "\n");
  return { statement };
}

/** An in-toto v1 statement with a SLSA v1 provenance predicate (the fields a release uses). */
export interface InTotoStatement {
  _type: "https://in-toto.io/Statement/v1";
  subject: Array<{ name: string; digest: { sha256: string } }>;
  predicateType: "https://slsa.dev/provenance/v1";
  predicate: {
    buildDefinition: {
      buildType: string;
      externalParameters: { source: { uri: string; digest: { gitCommit: string } } };
      internalParameters: Record<string, string>;
      resolvedDependencies: Array<{ name: string; digest: { sha256: string } }>;
    };
    runDetails: { builder: { id: string }; metadata: { startedOn: string; finishedOn: string } };
  };
}

/** What a verification found. */
export interface ReleaseVerification {
  ok: boolean;
  /** Each mismatch, naming the file or the check. */
  problems: string[];
  /** The key that signed the release, when the signature verified. */
  signedBy?: string;
  sourceCommit?: string;
  kernelVersion?: string;
  /** Files checked against the manifest. */
  files: number;
}

/**
 * Verifies the release in `dir` against the kernel in `root`: the attestation's signature by a
 * trusted key, the statement's subjects against the manifest and SBOM, the lock file against the
 * provenance, and every file under the manifest's roots against its hash.
 */
export function verifyRelease(root: string, dir: string, trusted: readonly VerifierKey[]): ReleaseVerification {
  const problems: string[] = [];
  const read = (name: string): Buffer | undefined => {
    const path = join(dir, name);
    if (existsSync(path)) return readFileSync(path);
    problems.push(`${name}: missing from the release directory ${dir}`);
    return undefined;
  };
  const attestation = read(RELEASE_FILES.attestation);
  const manifestBytes = read(RELEASE_FILES.manifest);
  const sbom = read(RELEASE_FILES.sbom);
  if (!attestation || !manifestBytes || !sbom) return { ok: false, problems, files: 0 };
  let statement: InTotoStatement;
  let signedBy: string;
  try {
    const opened = openEnvelope(JSON.parse(attestation.toString("utf8")) as DsseEnvelope, trusted);
    signedBy = opened.key.name;
    statement = JSON.parse(opened.payload.toString("utf8")) as InTotoStatement;
  } catch (err) {
    problems.push(`${RELEASE_FILES.attestation}: ${err instanceof Error ? err.message : String(err)}`);
    return { ok: false, problems, files: 0 };
  }
  if (
    statement._type !== "https://in-toto.io/Statement/v1" ||
    statement.predicateType !== "https://slsa.dev/provenance/v1"
  )
    problems.push(`${RELEASE_FILES.attestation}: not an in-toto statement with SLSA provenance`);
  for (const [name, bytes] of [
    [RELEASE_FILES.manifest, manifestBytes],
    [RELEASE_FILES.sbom, sbom],
  ] as const) {
    const subject = statement.subject?.find((s) => s.name === name);
    if (!subject) problems.push(`${name}: not a subject of the signed statement`);
    else if (subject.digest.sha256 !== sha256Hex(bytes)) problems.push(`${name}: differs from what was signed`);
  }
  const lock = statement.predicate?.buildDefinition?.resolvedDependencies?.find((d) => d.name === "package-lock.json");
  const lockPath = join(root, "package-lock.json");
  if (lock && existsSync(lockPath) && lock.digest.sha256 !== sha256Hex(readFileSync(lockPath)))
    problems.push("package-lock.json: differs from the lock file the release was built from");
  let files = 0;
  let kernelVersion: string | undefined;
  try {
    const manifest = parseManifest(manifestBytes.toString("utf8"));
    kernelVersion = manifest.kernelVersion;
    files = Object.keys(manifest.files).length;
    problems.push(...checkManifest(root, manifest));
  } catch (err) {
    problems.push(`${RELEASE_FILES.manifest}: ${err instanceof Error ? err.message : String(err)}`);
  }
  return {
    ok: problems.length === 0,
    problems,
    signedBy,
    sourceCommit: statement.predicate?.buildDefinition?.externalParameters?.source?.digest?.gitCommit,
    ...(kernelVersion === undefined ? {} : { kernelVersion }),
    files,
  };
}
