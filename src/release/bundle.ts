import { execFileSync } from "node:child_process";
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { encodeVerifierKey, parseVerifierKey, verifierKeyOf, type Signer, type VerifierKey } from "../audit/index.js";
import { openEnvelope, signEnvelope, type DsseEnvelope } from "./dsse.js";
import { digest, releaseRoots } from "./release-manifest.js";
import { RELEASE_FILES, verifyRelease } from "./release.js";

/**
 * An offline bundle (docs/release.md, "Air-gapped install"): a directory holding the kernel
 * archive (built code, production dependencies, the signed release), the trust it was made with,
 * key rotation statements, a signed index and the install steps. Installing it needs no network.
 */
export const BUNDLE_FILES = {
  archive: "kernel.tar.gz",
  index: "bundle.dsse.json",
  install: "INSTALL.md",
  rotations: "rotations",
} as const;

const BUNDLE_PAYLOAD_TYPE = "application/vnd.nops.bundle+json";
const ROTATION_PAYLOAD_TYPE = "application/vnd.nops.key-rotation+json";

/** The signed index of a bundle. */
interface BundleIndex {
  version: 1;
  kernelVersion: string;
  archive: { name: string; sha256: string };
  /** The verifier keys the installed kernel pins (release.trustedKeys). */
  trustedKeys: string[];
}

/** A key rotation: `next` replaces `previous`, signed offline by `previous`. */
interface KeyRotation {
  previous: string;
  next: string;
  issuedAt: string;
}

/** Signs a key rotation with the old key: kernels that trust the old key come to trust the new one. */
export async function signKeyRotation(previous: Signer, next: VerifierKey, now = new Date()): Promise<DsseEnvelope> {
  const rotation: KeyRotation = {
    previous: encodeVerifierKey(previous.name, previous.publicKey),
    next: encodeVerifierKey(next.name, next.publicKey),
    issuedAt: now.toISOString(),
  };
  return signEnvelope(ROTATION_PAYLOAD_TYPE, Buffer.from(JSON.stringify(rotation)), previous);
}

/**
 * The keys trusted after applying rotation statements: a rotation counts only when it is signed
 * by a key already trusted and names that key as `previous`. Chains (A -> B -> C) are followed.
 */
export function applyRotations(trusted: readonly VerifierKey[], rotations: readonly DsseEnvelope[]): VerifierKey[] {
  const keys = [...trusted];
  const encoded = (k: VerifierKey) => encodeVerifierKey(k.name, k.publicKey);
  for (let grew = true; grew; ) {
    grew = false;
    for (const envelope of rotations) {
      if (envelope.payloadType !== ROTATION_PAYLOAD_TYPE) continue;
      let opened;
      try {
        opened = openEnvelope(envelope, keys);
      } catch {
        continue;
      }
      const rotation = JSON.parse(opened.payload.toString("utf8")) as KeyRotation;
      if (rotation.previous !== encoded(opened.key)) continue;
      const next = parseVerifierKey(rotation.next);
      if (!keys.some((k) => encoded(k) === encoded(next))) {
        keys.push(next);
        grew = true;
      }
    }
  }
  return keys;
}

/** What `bundle create` needs. */
export interface CreateBundleOptions {
  /** The kernel's root. */
  root: string;
  /** Its signed release. @default "<root>/release" */
  releaseDir?: string;
  out: string;
  signer: Signer;
  kernelVersion: string;
  /** Rotation statements shipped with the bundle (the chain from the installed key to `signer`). */
  rotations?: DsseEnvelope[];
}

/** Makes an offline bundle of the kernel at `root` (its release must already be signed). */
export async function createBundle(options: CreateBundleOptions): Promise<void> {
  const { root, out, signer } = options;
  const releaseDir = options.releaseDir ?? join(root, "release");
  for (const file of Object.values(RELEASE_FILES))
    if (!existsSync(join(releaseDir, file)))
      throw new Error(`${join(releaseDir, file)} is missing: run nops-kernel release sign first`);
  const self = [verifierKeyOf(signer)];
  const check = verifyRelease(root, releaseDir, self);
  if (!check.ok) throw new Error(`the release does not verify with the bundle's key: ${check.problems.join("; ")}`);
  mkdirSync(join(out, BUNDLE_FILES.rotations), { recursive: true });
  const archive = join(out, BUNDLE_FILES.archive);
  // The release goes in as release/, wherever it was signed into.
  const staging = mkdtempSync(join(tmpdir(), "nops-bundle-"));
  try {
    cpSync(releaseDir, join(staging, "release"), { recursive: true });
    // Deterministic member order and ownership; the manifest says which files belong.
    execFileSync(
      "tar",
      [
        ...["--sort=name", "--owner=0", "--group=0", "--numeric-owner", "-czf", archive],
        ...["-C", staging, "release", "-C", root, ...releaseRoots(root)],
      ],
      { stdio: ["ignore", "ignore", "pipe"] },
    );
  } finally {
    rmSync(staging, { recursive: true, force: true });
  }
  (options.rotations ?? []).forEach((r, i) =>
    writeFileSync(
      join(out, BUNDLE_FILES.rotations, `${String(i).padStart(3, "0")}.dsse.json`),
      JSON.stringify(r) + "\n",
    ),
  );
  const index: BundleIndex = {
    version: 1,
    kernelVersion: options.kernelVersion,
    archive: { name: BUNDLE_FILES.archive, sha256: digest(archive) },
    trustedKeys: [encodeVerifierKey(signer.name, signer.publicKey)],
  };
  const envelope = await signEnvelope(BUNDLE_PAYLOAD_TYPE, Buffer.from(JSON.stringify(index)), signer);
  writeFileSync(join(out, BUNDLE_FILES.index), JSON.stringify(envelope, null, 1) + "\n");
  writeFileSync(join(out, BUNDLE_FILES.install), installSteps(index));
}

function installSteps(index: BundleIndex): string {
  return [
    `# Installing NOPS Kernel ${index.kernelVersion} offline`,
    "",
    "Needs only Node.js 22 or 24 on the target machine; no network is used.",
    "",
    "1. Copy this directory to the machine (removable media, a one-way transfer).",
    "2. Verify and install it, pinning the release key you were given out of band:",
    "",
    "   ```sh",
    "   node <kernel>/dist/src/cli.js bundle install --dir <this directory> --target /opt/nops-kernel \\",
    "     --trusted-key '<release verifier key>'",
    "   ```",
    "",
    "   (any already installed kernel can run the command; `bundle verify` checks without installing).",
    "3. Start it with `/opt/nops-kernel/release.yaml` merged into its config: the kernel verifies the",
    "   release at every start and refuses to start on any mismatch.",
    "",
    `Archive SHA-256: ${index.archive.sha256}`,
    "",
  ].join("\n");
}

function readRotations(dir: string): DsseEnvelope[] {
  const rotations = join(dir, BUNDLE_FILES.rotations);
  if (!existsSync(rotations)) return [];
  return readdirSync(rotations)
    .filter((f) => f.endsWith(".dsse.json"))
    .sort()
    .map((f) => JSON.parse(readFileSync(join(rotations, f), "utf8")) as DsseEnvelope);
}

/** Verifies a bundle: its index signed by a trusted key (after its rotations) and the archive's hash. */
export function verifyBundle(
  dir: string,
  trusted: readonly VerifierKey[],
): { keys: VerifierKey[]; index: BundleIndex } {
  const indexPath = join(dir, BUNDLE_FILES.index);
  if (!existsSync(indexPath)) throw new Error(`${indexPath} is missing: not a bundle`);
  const keys = applyRotations(trusted, readRotations(dir));
  const { payload } = openEnvelope(JSON.parse(readFileSync(indexPath, "utf8")) as DsseEnvelope, keys);
  const index = JSON.parse(payload.toString("utf8")) as BundleIndex;
  const archive = join(dir, index.archive.name);
  if (!existsSync(archive)) throw new Error(`${archive} is missing`);
  if (digest(archive) !== index.archive.sha256) throw new Error(`${index.archive.name}: differs from what was signed`);
  return { keys, index };
}

/**
 * Installs a verified bundle into `target` (no network): extracts the archive, verifies the
 * extracted release with the bundle's trust, and writes `release.yaml`, the config section that
 * makes the installed kernel verify itself at every start.
 */
export function installBundle(dir: string, target: string, trusted: readonly VerifierKey[]): { files: number } {
  const { keys } = verifyBundle(dir, trusted);
  mkdirSync(target, { recursive: true });
  execFileSync("tar", ["-xzf", join(dir, BUNDLE_FILES.archive), "-C", target], { stdio: ["ignore", "ignore", "pipe"] });
  const result = verifyRelease(target, join(target, "release"), keys);
  if (!result.ok) throw new Error(`the installed release does not verify: ${result.problems.slice(0, 5).join("; ")}`);
  const pinned = keys.map((k) => encodeVerifierKey(k.name, k.publicKey));
  writeFileSync(
    join(target, "release.yaml"),
    [
      "release:",
      "  enforce: true",
      `  root: ${JSON.stringify(target)}`,
      "  trustedKeys:",
      ...pinned.map((k) => `    - ${JSON.stringify(k)}`),
      "",
    ].join("\n"),
  );
  return { files: result.files };
}
