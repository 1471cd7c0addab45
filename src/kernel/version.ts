import { readFileSync } from "node:fs";

function readVersion(): string {
  // This file runs from src/kernel/ (tsx) or dist/src/kernel/ (built): package.json is two or three levels up.
  for (const rel of ["../../package.json", "../../../package.json"]) {
    try {
      const pkg = JSON.parse(readFileSync(new URL(rel, import.meta.url), "utf8")) as {
        name?: string;
        version?: string;
      };
      if (pkg.name === "nops-kernel" && pkg.version) return pkg.version;
    } catch {
      // not at this level
    }
  }
  return "unknown";
}

/** The kernel's version, from package.json. */
export const KERNEL_VERSION = readVersion();
