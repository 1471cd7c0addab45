import { readFileSync } from "node:fs";
import { join } from "node:path";
import type { ExecutionContext } from "ava";
import { createClient, type Client } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import type { DescService } from "@bufbuild/protobuf";
import { freePort, spawnChild, waitFor, type Child } from "../helpers/processes.js";

const ROOT = new URL("../../", import.meta.url).pathname;

/** A kernel run as its own process (`nops-kernel serve`), so it can be killed and restarted on its data dir. */
export interface KernelProcess {
  dataDir: string;
  grpcPort: number;
  httpPort: number;
  devIdentityDir: string;
  /** Starts the kernel (again) on the same data dir and ports; resolves when it logged "kernel started". */
  start(): Promise<void>;
  /** SIGKILL: no drain, no flush. */
  kill(): Promise<void>;
  output(): string;
  /** A client authenticated as the dev issuer's developer (SUPER_ADMIN) over the gRPC port. */
  admin<S extends DescService>(service: S): Client<S>;
}

/** Prepares a kernel process on free ports; `env` adds NOPS_* settings. */
export async function createKernelProcess(
  t: ExecutionContext,
  dataDir: string,
  env: Record<string, string> = {},
): Promise<KernelProcess> {
  const grpcPort = await freePort();
  const httpPort = await freePort();
  const devIdentityDir = join(dataDir, "dev-identity");
  let child: Child | undefined;
  let previousOutput = "";
  let admin: ReturnType<typeof createGrpcTransport> | undefined;
  const kp: KernelProcess = {
    dataDir,
    grpcPort,
    httpPort,
    devIdentityDir,
    async start() {
      child = spawnChild(
        t,
        process.execPath,
        ["--import", "tsx", join(ROOT, "src/cli.ts"), "serve"],
        {
          NOPS_DATA_DIR: dataDir,
          NOPS_GRPC_PORT: String(grpcPort),
          NOPS_HTTP_PORT: String(httpPort),
          NOPS_NATS_LEAF: "off",
          NOPS_LOG_LEVEL: "info",
          NOPS_SHUTDOWN_GRACE_MS: "1000",
          ...env,
        },
        ROOT,
      );
      const c = child;
      await waitFor(() => c.output().includes('"kernel started"'), "kernel started", 60_000, 100);
    },
    async kill() {
      if (!child?.proc.pid) return;
      process.kill(child.proc.pid, "SIGKILL");
      await child.exited;
      previousOutput += child.output();
      child = undefined;
    },
    output: () => previousOutput + (child?.output() ?? ""),
    admin(service) {
      admin ??= createGrpcTransport({
        baseUrl: `https://localhost:${grpcPort}`,
        nodeOptions: {
          ca: readFileSync(join(devIdentityDir, "bundle.pem")),
          cert: readFileSync(join(devIdentityDir, "svid.pem")),
          key: readFileSync(join(devIdentityDir, "svid.key")),
        },
      });
      return createClient(service, admin);
    },
  };
  return kp;
}
