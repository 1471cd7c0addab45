import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import type { ExecutionContext } from "ava";
import { createClient, type Client } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import type { DescService } from "@bufbuild/protobuf";
import { freePort, waitFor } from "../helpers/processes.js";
import { TEST_DGE_BUDGET } from "../helpers/kernel.js";

/** Repository root. */
export const ROOT = fileURLToPath(new URL("../../", import.meta.url));
/** Debian's interpreter, so the SDK runs on Debian's python3-grpcio and python3-protobuf. */
export const PYTHON = process.env.NOPS_TEST_PYTHON ?? "/usr/bin/python3";
/** PYTHONPATH that makes nops_agent importable from the source tree. */
export const SDK_PYTHONPATH = join(ROOT, "sdk/python/src");

/** A process with line-by-line captured output. */
export interface Proc {
  proc: ChildProcess;
  /** Every stdout and stderr line so far. */
  lines: string[];
  exited: Promise<number | null>;
  /** Waits for a line matching `re` (from the start of the output), bounded. */
  line(re: RegExp, what: string, timeoutMs?: number): Promise<string>;
  kill(signal?: NodeJS.Signals): void;
}

/** Spawns a process for a test; SIGKILLs it by pid in teardown if it still runs. */
export function spawnProc(
  t: ExecutionContext,
  command: string,
  args: string[],
  env: Record<string, string>,
  stdin = false,
): Proc {
  const proc = spawn(command, args, {
    cwd: ROOT,
    env: { ...process.env, ...env },
    stdio: [stdin ? "pipe" : "ignore", "pipe", "pipe"],
  });
  const lines: string[] = [];
  for (const stream of [proc.stdout, proc.stderr]) {
    if (stream) createInterface({ input: stream }).on("line", (l) => lines.push(l));
  }
  const exited = new Promise<number | null>((resolve) => proc.once("exit", (code) => resolve(code)));
  const kill = (signal: NodeJS.Signals = "SIGKILL") => {
    if (proc.exitCode === null && proc.signalCode === null && proc.pid) process.kill(proc.pid, signal);
  };
  t.teardown(() => kill("SIGKILL"));
  return {
    proc,
    lines,
    exited,
    kill,
    async line(re, what, timeoutMs = 30_000) {
      let found: string | undefined;
      await waitFor(
        () => {
          found = lines.find((l) => re.test(l));
          if (!found && proc.exitCode !== null) throw new Error(`exited ${proc.exitCode}`);
          return found !== undefined;
        },
        what,
        timeoutMs,
      ).catch((e: unknown) => {
        throw new Error(`${(e as Error).message}\n--- output ---\n${lines.slice(-40).join("\n")}`);
      });
      return found!;
    },
  };
}

/** A kernel run as its own process (so it can be killed), with the dev issuer's identity. */
export interface KernelProcess {
  dir: string;
  devDir: string;
  grpcPort: number;
  httpPort: number;
  /** Starts the kernel with a database; a new name is a kernel that has forgotten every agent. */
  start(database?: string): Promise<Proc>;
  /** SIGKILLs the running kernel and waits for it to exit. */
  kill(): Promise<void>;
  /** A client of the kernel's mTLS gRPC port, authenticated as the dev issuer's developer (SUPER_ADMIN). */
  client<S extends DescService>(service: S): Client<S>;
}

/** Makes a temporary kernel directory on two free ports; removed in teardown. */
export async function kernelProcess(t: ExecutionContext, heartbeatTtlMs = 1500): Promise<KernelProcess> {
  const dir = mkdtempSync(join(tmpdir(), "nops-sdk-py-"));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const devDir = join(dir, "dev-identity");
  const grpcPort = await freePort();
  const httpPort = await freePort();
  let current: Proc | undefined;
  const config = (database: string) => ({
    dataDir: dir,
    databasePath: join(dir, database),
    grpc: { host: "127.0.0.1", port: grpcPort },
    http: { host: "127.0.0.1", port: httpPort },
    log: { level: "info" },
    shutdownGraceMs: 1000,
    identity: { source: "dev", devDir },
    nats: { leaf: "off" },
    registry: { heartbeatTtlMs, zombieAfterMs: heartbeatTtlMs * 4 },
    // Every process here calls from 127.0.0.1: the per-IP limit would throttle the scenario itself.
    rateLimit: { ipLimit: 1_000_000, tierLimits: { 1: 100_000, 2: 100_000, 3: 100_000 } },
    admin: { dependencies: { dge: TEST_DGE_BUDGET } },
  });
  return {
    dir,
    devDir,
    grpcPort,
    httpPort,
    async start(database = "kernel.db") {
      const file = join(dir, `kernel-${database}.json`);
      writeFileSync(file, JSON.stringify(config(database)));
      current = spawnProc(
        t,
        process.execPath,
        ["--import", "tsx", join(ROOT, "src/cli.ts"), "serve", "--config", file],
        {},
      );
      // Generous: under tsx a cold start compiles the kernel's modules, on two cores shared with the suite.
      await current.line(/"msg":"kernel started"/, "the kernel to start", 120_000);
      return current;
    },
    async kill() {
      if (!current) return;
      current.kill("SIGKILL");
      await current.exited;
    },
    client(service) {
      const read = (f: string) => readFileSync(join(devDir, f), "utf8");
      const transport = createGrpcTransport({
        baseUrl: `https://localhost:${grpcPort}`,
        nodeOptions: { ca: read("bundle.pem"), cert: read("svid.pem"), key: read("svid.key") },
      });
      return createClient(service, transport);
    },
  };
}

/** JSON events the conformance agent printed, in order. */
export function events(p: Proc): Record<string, unknown>[] {
  return p.lines.filter((l) => l.startsWith('{"event"')).map((l) => JSON.parse(l) as Record<string, unknown>);
}
