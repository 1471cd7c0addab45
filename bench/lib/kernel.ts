// Starting the built kernel for a bench: the node flags it ships with, a config file in its data
// directory, ephemeral ports, and the port it reports listening on.
import { spawn, type ChildProcess } from "node:child_process";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { createInterface } from "node:readline";
import type { Client } from "@connectrpc/connect";
import type { AgentRegistryService } from "../../gen/nops/kernel/v1/agent_registry_pb.js";
import { kernelLaunch } from "./h2load.js";

/**
 * The rate limits a bench's kernel runs with: the load comes from one loopback address and one tenant
 * ("bench"), so the per-IP and per-tier limits are lifted for them. The limiter still counts every call,
 * as in production.
 */
export const LIFTED_RATE_LIMITS = {
  ipOverrides: { "127.0.0.1": 1_000_000_000 },
  tenantTiers: { bench: 3 },
  tierLimits: { 3: 1_000_000_000 },
};

/**
 * Starts `checkout`'s built kernel (`dist/src/cli.js serve`) as `nops-kernel` runs (kernelLaunch), with
 * `config` written to `dataDir/bench.json`, its data in `dataDir` and both ports ephemeral. `nodeArgs`
 * come after the shipped flags, `env` over the environment. Its stdout (the log) is piped.
 */
export function spawnKernel(
  checkout: string,
  dataDir: string,
  config: object,
  extra: { nodeArgs?: string[]; env?: Record<string, string> } = {},
): ChildProcess {
  const file = join(dataDir, "bench.json");
  writeFileSync(file, JSON.stringify(config));
  const launch = kernelLaunch(checkout);
  return spawn(
    process.execPath,
    [...launch.nodeArgs, ...(extra.nodeArgs ?? []), join(checkout, "dist/src/cli.js"), "serve", "--config", file],
    {
      env: {
        ...process.env,
        ...launch.env,
        NOPS_DATA_DIR: dataDir,
        NOPS_GRPC_PORT: "0",
        NOPS_HTTP_PORT: "0",
        ...extra.env,
      },
      stdio: ["ignore", "pipe", "inherit"],
    },
  );
}

/** The port the kernel's start line reports for its gRPC or HTTP server. */
export function listeningPort(kernel: ChildProcess, server: "grpc" | "http"): Promise<number> {
  const listening = new RegExp(`"${server}":"[^"]*:(\\d+)"`);
  return new Promise<number>((resolve, reject) => {
    kernel.once("exit", (code) => reject(new Error(`kernel exited ${code} before listening`)));
    createInterface({ input: kernel.stdout! }).on("line", (line) => {
      const m = listening.exec(line);
      if (m) resolve(Number(m[1]));
    });
  });
}

/** Registers the bench's echo agent at `endpoint` for tenant "bench", capability echo 1.0.0; its id. */
export async function registerEchoAgent(
  registry: Client<typeof AgentRegistryService>,
  endpoint: string,
): Promise<string> {
  const { agent } = await registry.registerAgent({
    tenant: "bench",
    name: "echo",
    version: "1",
    endpoint,
    capabilities: [{ name: "echo", version: "1.0.0" }],
  });
  return agent!.id;
}
