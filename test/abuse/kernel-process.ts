import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import * as http from "node:http";
import * as https from "node:https";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { ExecutionContext } from "ava";
import { createClient, type Client } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport } from "@connectrpc/connect-node";
import type { DescService } from "@bufbuild/protobuf";
import { freePort, spawnChild, waitFor, type Child } from "../helpers/processes.js";

const root = new URL("../..", import.meta.url).pathname;

/** A kernel running as its own process (`src/cli.ts serve`) under a descriptor limit. */
export interface KernelProcess {
  child: Child;
  pid: number;
  grpcPort: number;
  httpPort: number;
  dataDir: string;
  /** mTLS material of the dev identity (the super-admin SVID and the bundle); undefined in plaintext. */
  tls?: { ca: string; cert: string; key: string };
  /** performance.now() when the kernel was serving. */
  startedAt: number;
  /** Descriptors the kernel process holds now (/proc/<pid>/fd). */
  fds(): number;
  /** A client on the gRPC port (grpc-js) or the HTTP port (Connect over HTTP/2), with the SVID when mTLS. */
  client<S extends DescService>(service: S, port: "grpc" | "http"): Client<S>;
  /** GET /healthz on the HTTP port: its status code. */
  healthz(): Promise<number>;
}

/** Options of the spawned kernel. */
export interface KernelProcessOptions {
  tls: boolean;
  /** RLIMIT_NOFILE (soft and hard) of the kernel process. */
  nofile: number;
  /** NOPS_LIMITS_* overrides, e.g. { HEADERS_TIMEOUT_MS: "2000" }. */
  limits?: Record<string, string>;
}

/** Spawns `prlimit --nofile=N:N node --import tsx src/cli.ts serve` and waits until it serves. */
export async function spawnKernel(t: ExecutionContext, o: KernelProcessOptions): Promise<KernelProcess> {
  const dataDir = mkdtempSync(join(tmpdir(), "nops-abuse-"));
  t.teardown(() => rmSync(dataDir, { recursive: true, force: true }));
  const [grpcPort, httpPort] = [await freePort(), await freePort()];
  const env: Record<string, string> = {
    NOPS_DATA_DIR: dataDir,
    NOPS_GRPC_PORT: String(grpcPort),
    NOPS_HTTP_PORT: String(httpPort),
    NOPS_IDENTITY_SOURCE: o.tls ? "dev" : "none",
    NOPS_NATS_LEAF: "off",
    NOPS_LOG_LEVEL: "info",
  };
  for (const [k, v] of Object.entries(o.limits ?? {})) env[`NOPS_LIMITS_${k}`] = v;
  // prlimit execs the command: the pid is the kernel's own.
  const child = spawnChild(
    t,
    "prlimit",
    [`--nofile=${o.nofile}:${o.nofile}`, process.execPath, "--import", "tsx", join(root, "src/cli.ts"), "serve"],
    env,
    root,
  );
  const pid = child.proc.pid!;
  // If ava times the test out, teardown does not run: the kernel must not outlive the worker.
  const orphanGuard = () => {
    if (child.proc.exitCode === null && child.proc.signalCode === null) process.kill(pid, "SIGKILL");
  };
  process.once("exit", orphanGuard);
  t.teardown(() => void process.off("exit", orphanGuard));
  await waitFor(() => /kernel started/.test(child.output()), "kernel start", 60_000, 100);
  const dev = join(dataDir, "dev-identity");
  const tls = o.tls
    ? {
        ca: readFileSync(join(dev, "bundle.pem"), "utf8"),
        cert: readFileSync(join(dev, "svid.pem"), "utf8"),
        key: readFileSync(join(dev, "svid.key"), "utf8"),
      }
    : undefined;
  const scheme = o.tls ? "https" : "http";
  const nodeOptions = tls ? { ...tls, rejectUnauthorized: true, servername: "localhost" } : {};
  return {
    child,
    pid,
    grpcPort,
    httpPort,
    dataDir,
    tls,
    startedAt: performance.now(),
    fds: () => readdirSync(`/proc/${pid}/fd`).length,
    client: (service, port) =>
      createClient(
        service,
        port === "grpc"
          ? createGrpcTransport({ baseUrl: `${scheme}://localhost:${grpcPort}`, nodeOptions })
          : createConnectTransport({
              baseUrl: `${scheme}://localhost:${httpPort}`,
              httpVersion: "2",
              nodeOptions,
            }),
      ),
    healthz: () =>
      new Promise<number>((resolve, reject) => {
        const req = (o.tls ? https : http).request(
          `${scheme}://localhost:${httpPort}/healthz`,
          { ca: tls?.ca, agent: false, timeout: 1000 },
          (res) => {
            res.resume();
            resolve(res.statusCode ?? 0);
          },
        );
        req.on("timeout", () => req.destroy(new Error("healthz timed out")));
        req.on("error", reject);
        req.end();
      }),
  };
}
