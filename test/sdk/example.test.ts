import "reflect-metadata";
import { readFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import test from "ava";
import { AgentRegistryService } from "../../gen/nops/kernel/v1/agent_registry_pb.js";
import { spawnChild, waitFor } from "../helpers/processes.js";
import { createKernelProcess } from "./kernel-process.js";
import { tempDataDir } from "./launchers.js";

const ROOT = new URL("../../", import.meta.url).pathname;
const EXAMPLE = join(ROOT, "examples/typescript");

// examples/typescript/README.md: `npm start` (the kernel), then `npm start -w examples/typescript`.
// The kernel runs here as `nops-kernel serve` on free ports and a temporary data dir; the example
// runs with exactly its package's start script, pointed at that kernel.
test.serial(
  "example (typescript) - the summarizer joins the kernel, answers through it, drains on SIGTERM",
  async (t) => {
    t.timeout(120_000);
    const dataDir = tempDataDir();
    t.teardown(() => rmSync(dataDir, { recursive: true, force: true }));
    const kernel = await createKernelProcess(t, dataDir);
    await kernel.start();
    const pkg = JSON.parse(readFileSync(join(EXAMPLE, "package.json"), "utf8")) as { scripts: { start: string } };
    const [command, ...args] = pkg.scripts.start.split(" ");
    t.is(command, "node");
    const example = spawnChild(
      t,
      process.execPath,
      args,
      { NOPS_KERNEL_URL: `https://localhost:${kernel.grpcPort}`, NOPS_DEV_IDENTITY_DIR: kernel.devIdentityDir },
      EXAMPLE,
    );
    await waitFor(
      () => {
        if (example.proc.exitCode !== null) throw new Error(example.output());
        return example.output().includes("published event");
      },
      "the example's summary",
      60_000,
    ).catch((e: Error) => t.fail(`${e.message}\n${example.output()}`));
    t.regex(example.output(), /summary \(via the kernel, answered by summarizer\): \S+/);
    t.regex(example.output(), /published event \S+/);
    const registry = kernel.admin(AgentRegistryService);
    const listed = await registry.listAgents({ tenant: "demo", capability: "summarize" });
    t.deepEqual(
      listed.agents.map((a) => a.name),
      ["summarizer"],
    );
    process.kill(example.proc.pid!, "SIGTERM");
    t.is(await example.exited, 0, example.output());
    t.regex(example.output(), /drained \(deregistered: true\)/);
    t.is((await registry.listAgents({ tenant: "demo" })).agents.length, 0);
  },
);
