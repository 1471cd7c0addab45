import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, lstatSync, readFileSync, readdirSync, readlinkSync, realpathSync } from "node:fs";
import { join, relative, sep } from "node:path";

/**
 * What a release is made of: the SHA-256 of every file the kernel runs, under `roots` (paths
 * relative to the kernel's root directory). A file under a root that the manifest does not list
 * is as much a mismatch as a changed one: an added module can be loaded as surely as an edited one.
 */
export interface ReleaseManifest {
  /** Format of this document. */
  version: 1;
  kernelVersion: string;
  /** Directories and files whose whole content is the release, relative to the root, sorted. */
  roots: string[];
  /** Relative path (with "/") -> lowercase hex SHA-256; a symbolic link hashes as "symlink:" + its target. */
  files: Record<string, string>;
}

/** The kernel's own parts: built code (and the workspace packages it builds in), contracts, manifest, lock file. */
const KERNEL_ROOTS = ["dist/src", "dist/gen", "dist/packages", "proto", "package.json", "package-lock.json"];

/**
 * The roots of a release: the kernel's own parts and the directory of every production
 * dependency (`npm ls --omit=dev`), workspaces the kernel does not depend on left out.
 */
export function releaseRoots(root: string): string[] {
  const listed = execFileSync("npm", ["ls", "--omit=dev", "--all", "--parseable", "--workspaces=false"], {
    cwd: root,
    encoding: "utf8",
    stdio: ["ignore", "pipe", "ignore"],
  });
  const rel = (dir: string) => relative(root, dir).split(sep).join("/");
  const dependencies = listed
    .split("\n")
    .filter(Boolean)
    .filter((dir) => rel(dir).startsWith("node_modules/"));
  // A workspace package is a symbolic link into the repository: the link and what it points at.
  const linked = dependencies
    .filter((dir) => lstatSync(dir).isSymbolicLink())
    .map((dir) => rel(realpathSync(dir)))
    .filter((dir) => !dir.startsWith(".."));
  return [
    ...new Set([...KERNEL_ROOTS.filter((p) => existsSync(join(root, p))), ...dependencies.map(rel), ...linked]),
  ].sort();
}

/** Lowercase hex SHA-256 of bytes or text. */
export const sha256Hex = (bytes: Uint8Array | string): string => createHash("sha256").update(bytes).digest("hex");

/** The manifest digest of a file: its content's, or for a symbolic link "symlink:" + its target's. */
export function digest(path: string): string {
  const st = lstatSync(path);
  return sha256Hex(st.isSymbolicLink() ? `symlink:${readlinkSync(path)}` : readFileSync(path));
}

/** Every file under `roots` (relative paths with "/"), symbolic links as files, sorted. */
function walk(root: string, roots: readonly string[]): string[] {
  const files = new Set<string>();
  const visit = (rel: string): void => {
    const st = lstatSync(join(root, rel));
    if (st.isDirectory()) for (const name of readdirSync(join(root, rel))) visit(`${rel}/${name}`);
    else files.add(rel);
  };
  for (const r of roots) if (existsSync(join(root, r))) visit(r);
  return [...files].sort();
}

/** Hashes every file under `roots`. */
export function buildManifest(root: string, roots: readonly string[], kernelVersion: string): ReleaseManifest {
  const files: Record<string, string> = {};
  for (const rel of walk(root, roots)) files[rel] = digest(join(root, rel));
  return { version: 1, kernelVersion, roots: [...roots].sort(), files };
}

/** Checks the files under the manifest's roots against it; each problem names the file. */
export function checkManifest(root: string, manifest: ReleaseManifest): string[] {
  const problems: string[] = [];
  const present = new Set(walk(root, manifest.roots));
  for (const [rel, expected] of Object.entries(manifest.files)) {
    if (!present.has(rel)) problems.push(`${rel}: missing`);
    else if (digest(join(root, rel)) !== expected) problems.push(`${rel}: content differs from the release`);
  }
  for (const rel of present) if (!(rel in manifest.files)) problems.push(`${rel}: not part of the release`);
  return problems;
}

/** Parses a manifest document; throws naming what is wrong. */
export function parseManifest(text: string): ReleaseManifest {
  const m = JSON.parse(text) as Partial<ReleaseManifest>;
  if (m.version !== 1) throw new Error(`manifest version must be 1, got ${JSON.stringify(m.version)}`);
  if (!Array.isArray(m.roots) || m.roots.some((r) => typeof r !== "string" || r.startsWith("/") || r.includes("..")))
    throw new Error("manifest roots must be relative paths inside the kernel's directory");
  if (typeof m.files !== "object" || m.files === null) throw new Error("manifest files must be an object");
  for (const [rel, hash] of Object.entries(m.files))
    if (!/^[0-9a-f]{64}$/.test(hash) || rel.startsWith("/") || rel.split("/").includes(".."))
      throw new Error(`manifest entry ${rel}: must be a relative path with a hex SHA-256`);
  if (typeof m.kernelVersion !== "string") throw new Error("manifest kernelVersion must be a string");
  return m as ReleaseManifest;
}
