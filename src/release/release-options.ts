import { existsSync, readFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { ConfigError, readBool, readSection, readString, readStringList } from "../common/index.js";
import { parseVerifierKey, type VerifierKey } from "../audit/index.js";

/** The `release` config section: verify the signed release before serving (docs/release.md). */
export interface ReleaseOptions {
  /** Refuse to start unless the release verifies. @default false (the chart turns it on) */
  enforce: boolean;
  /** The directory whose files the manifest covers. @default the kernel's installation directory */
  root: string;
  /** The release directory (manifest, SBOM, attestation). @default "<root>/release" */
  dir: string;
  /** Verifier keys (`<name>+<id>+<base64 key>`) whose signature a release may carry. */
  trustedKeys: VerifierKey[];
}

/** The raw defaults. */
export const DEFAULT_RELEASE_OPTIONS = { enforce: false, root: "", dir: "", trustedKeys: [] as string[] };

/** The directory of the installed kernel: the nearest package.json named "nops-kernel" above this module. */
export function kernelRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const pkg = join(dir, "package.json");
    if (existsSync(pkg) && (JSON.parse(readFileSync(pkg, "utf8")) as { name?: string }).name === "nops-kernel")
      return dir;
    const up = dirname(dir);
    if (up === dir) throw new ConfigError("cannot find the kernel's package.json above its code");
    dir = up;
  }
}

/** Validates the `release` section; throws ConfigError naming the field. */
export function resolveReleaseOptions(input: unknown, path = "release"): ReleaseOptions {
  const d = DEFAULT_RELEASE_OPTIONS;
  const s = readSection(input, path, d);
  const enforce = readBool(s, "enforce", path, d.enforce);
  const keys = readStringList(s, "trustedKeys", path, d.trustedKeys);
  const trustedKeys = keys.map((k, i) => {
    try {
      return parseVerifierKey(k);
    } catch (err) {
      throw new ConfigError(`${path}.trustedKeys[${i}]: ${err instanceof Error ? err.message : String(err)}`);
    }
  });
  if (enforce && trustedKeys.length === 0)
    throw new ConfigError(`${path}.trustedKeys must list at least one key when ${path}.enforce is true`);
  const rootOption = readString(s, "root", path, d.root);
  const root = rootOption ? resolve(rootOption) : kernelRoot();
  const dir = readString(s, "dir", path, d.dir);
  return { enforce, root, dir: dir ? resolve(dir) : join(root, "release"), trustedKeys };
}
