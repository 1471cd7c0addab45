import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Writable } from "node:stream";
import { request } from "node:https";
import type { DescService } from "@bufbuild/protobuf";
import { createClient, type Client } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport } from "@connectrpc/connect-node";
import Database from "better-sqlite3";
import { resolveKernelOptions } from "../../src/kernel/kernel-options.js";
import { startKernel, type Kernel } from "../../src/kernel/index.js";
import { TEST_DGE_BUDGET } from "../helpers/kernel.js";

/** A kernel with the dev issuer in its own trust domain, on loopback. */
export interface FedKernel {
  kernel: Kernel;
  dir: string;
  trustDomain: string;
  spiffeId: string;
  logs: string[];
  grpcEndpoint: string;
  httpEndpoint: string;
  /** A client presenting a credential of this kernel's dev identity dir: developer (SUPER_ADMIN) or kernel SVID. */
  client<S extends DescService>(
    service: S,
    target: { kernel: FedKernel; transport: "grpc" | "connect"; as?: "developer" | "kernel" | "none" },
  ): Client<S>;
  /** GET over TLS (server not verified: test use only). */
  get(path: string): Promise<{ status: number; body: string }>;
  /** POST JSON over TLS (server not verified: test use only). */
  post(path: string, body: unknown): Promise<{ status: number; body: string }>;
  /** Audit rows of this kernel with the given action. */
  audit(action: string): { actor: string; outcome: string; resource: string; details: string }[];
  stop(): Promise<void>;
}

/** Starts a kernel of trust domain `trustDomain` with the dev issuer. */
export async function startFedKernel(
  name: string,
  trustDomain: string,
  extra: Record<string, unknown> = {},
  /** The developer credential when the kernel has no dev issuer (Workload API double). */
  developer?: { cert: string; key: string },
): Promise<FedKernel> {
  const dir = mkdtempSync(join(tmpdir(), `nops-fed-${name}-`));
  const options = resolveKernelOptions({
    dataDir: dir,
    edgeId: name,
    trustDomain,
    grpc: { host: "127.0.0.1", port: 0 },
    http: { host: "127.0.0.1", port: 0 },
    log: { level: "debug" },
    shutdownGraceMs: 1000,
    identity: { source: "dev" },
    nats: { leaf: "off" },
    // The machine is shared: event-loop stalls from other work are not what these tests are about.
    admin: { overload: { enabled: false }, dependencies: { dge: TEST_DGE_BUDGET } },
    // Every caller here is 127.0.0.1; the per-address budget is not what these tests are about.
    rateLimit: { ipLimit: 1_000_000 },
    ...extra,
  });
  const logs: string[] = [];
  const logDestination = new Writable({
    write(chunk: Buffer, _enc, cb) {
      logs.push(...chunk.toString("utf8").split("\n").filter(Boolean));
      cb();
    },
  });
  let kernel: Kernel;
  try {
    kernel = await startKernel(options, { logDestination });
  } catch (err) {
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }
  const devDir = join(dir, "dev-identity");
  const file = (f: string) => readFileSync(join(devDir, f), "utf8");
  const self: FedKernel = {
    kernel,
    dir,
    trustDomain,
    spiffeId: `spiffe://${trustDomain}/nops/kernel/${name}`,
    logs,
    grpcEndpoint: `127.0.0.1:${kernel.grpcPort}`,
    httpEndpoint: `https://127.0.0.1:${kernel.httpPort}`,
    client(service, target) {
      const as = target.as ?? "developer";
      const nodeOptions = {
        ...(as === "developer" ? (developer ?? { cert: file("svid.pem"), key: file("svid.key") }) : {}),
        ...(as === "kernel" ? { cert: file("kernel-svid.pem"), key: file("kernel-svid.key") } : {}),
        // The test does not check the server's SPIFFE ID; the kernels under test do.
        rejectUnauthorized: false,
      };
      const transport =
        target.transport === "grpc"
          ? createGrpcTransport({ baseUrl: `https://${target.kernel.grpcEndpoint}`, nodeOptions })
          : createConnectTransport({ baseUrl: target.kernel.httpEndpoint, httpVersion: "1.1", nodeOptions });
      return createClient(service, transport);
    },
    get(path) {
      return new Promise((resolve, reject) => {
        const req = request(`${self.httpEndpoint}${path}`, { rejectUnauthorized: false }, (res) => {
          const chunks: Buffer[] = [];
          res.on("data", (c: Buffer) => chunks.push(c));
          res.on("end", () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString("utf8") }));
        });
        req.on("error", reject);
        req.end();
      });
    },
    post(path, body) {
      return new Promise((resolve, reject) => {
        const req = request(
          `${self.httpEndpoint}${path}`,
          { method: "POST", rejectUnauthorized: false, headers: { "content-type": "application/json" } },
          (res) => {
            const chunks: Buffer[] = [];
            res.on("data", (c: Buffer) => chunks.push(c));
            res.on("end", () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString("utf8") }));
          },
        );
        req.on("error", reject);
        req.end(JSON.stringify(body));
      });
    },
    audit(action) {
      const db = new Database(options.databasePath, { readonly: true });
      try {
        return db
          .prepare("SELECT actor, outcome, resource, details FROM audit_log WHERE action = ? ORDER BY seq")
          .all(action) as { actor: string; outcome: string; resource: string; details: string }[];
      } finally {
        db.close();
      }
    },
    async stop() {
      await kernel.stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
  return self;
}

/** Waits, polling every 50 ms, until `check` returns a value (generous deadline, no timing assertion). */
export async function eventually<T>(
  check: () => Promise<T | undefined> | T | undefined,
  what: string,
  ms = 60_000,
): Promise<T> {
  const until = Date.now() + ms;
  for (;;) {
    const v = await check();
    if (v !== undefined) return v;
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
