import { execFileSync } from "node:child_process";
import { cpSync, mkdirSync, mkdtempSync, readdirSync, rmSync } from "node:fs";
import { join } from "node:path";
import type { AgentLauncher } from "./agent-process.js";
import { pythonLauncher } from "./python-launcher.js";

const ROOT = new URL("../../", import.meta.url).pathname;

/**
 * The TypeScript SDK as a user gets it: `npm pack` of packages/agent-sdk installed into a folder
 * below the repository's node_modules (so its dependencies resolve from there, as they would from
 * a project's own node_modules), running test/sdk/agents/conformance-agent.mjs with plain node.
 */
export const typescriptLauncher: AgentLauncher = {
  language: "typescript",
  async prepare(t) {
    const base = join(ROOT, "node_modules", ".nops-sdk-conformance");
    mkdirSync(base, { recursive: true });
    const dir = mkdtempSync(join(base, "run-"));
    t.teardown(() => rmSync(dir, { recursive: true, force: true }));
    execFileSync("npm", ["pack", "--silent", "--pack-destination", dir], {
      cwd: join(ROOT, "packages/agent-sdk"),
      stdio: ["ignore", "ignore", "inherit"],
    });
    const tarball = readdirSync(dir).find((f) => f.endsWith(".tgz"));
    if (!tarball) throw new Error("npm pack produced no tarball");
    const target = join(dir, "node_modules", "@nops", "agent-sdk");
    mkdirSync(target, { recursive: true });
    execFileSync("tar", ["xzf", join(dir, tarball), "-C", target, "--strip-components=1"]);
    cpSync(join(ROOT, "test/sdk/agents/conformance-agent.mjs"), join(dir, "conformance-agent.mjs"));
    return { command: process.execPath, args: [join(dir, "conformance-agent.mjs")], cwd: dir };
  },
};

/** Every SDK the conformance scenario runs against. The Python SDK adds its launcher here. */
export const LAUNCHERS: readonly AgentLauncher[] = [typescriptLauncher, pythonLauncher];

/** Creates a temporary data dir for a kernel under the OS temp dir. */
export function tempDataDir(): string {
  return mkdtempSync(join(process.env.TMPDIR ?? "/tmp", "nops-sdk-kernel-"));
}
