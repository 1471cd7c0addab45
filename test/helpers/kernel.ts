import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Writable } from "node:stream";
import type { ExecutionContext } from "ava";
import type { DescService } from "@bufbuild/protobuf";
import { createClient, type Client, type Transport } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport, createGrpcWebTransport } from "@connectrpc/connect-node";
import { resolveKernelOptions, type KernelOptions } from "../../src/kernel/kernel-options.js";
import { startKernel, type Kernel, type KernelOverrides } from "../../src/kernel/index.js";
import { createInProcessTransport } from "./in-process-transport.js";

/** A kernel on free ports in a temporary data dir, plus captured log lines. */
export interface TestKernel {
  kernel: Kernel;
  dir: string;
  logs: string[];
  /** Client over the named transport: "grpc-js" hits the grpc-js server, the others connect-node. */
  client<S extends DescService>(service: S, transport: TransportName): Client<S>;
  transport(name: TransportName): Transport;
}

/**
 * Server/protocol pairs every RPC test runs over; "in-process" is the fast lane: the same bound
 * services and interceptor chain through connect's router transport, no socket.
 */
export type TransportName =
  | "grpc-js"
  | "connect-json"
  | "connect-binary-h2"
  | "grpc-web"
  | "grpc-over-connect-node"
  | "in-process";

/**
 * An API key pepper for kernels on the Workload API (the production identity), which refuse to
 * generate one beside their database (identity.allowPepperBesideDatabase).
 */
export const TEST_API_KEY_PEPPER = randomBytes(32).toString("base64");

/** The two servers, each with its native protocol: what "both transports" means in tests. */
export const BOTH: readonly TransportName[] = ["grpc-js", "connect-json"];

/**
 * The DGE call budget of test kernels: they share two cores with the rest of the suite, where a DGE
 * answer slower than the production budget (1 s) is contention, not a hung DGE. The guard's whole
 * deadline (5 s) instead; tests about a hung DGE set the production budget themselves.
 */
export const TEST_DGE_BUDGET = { budgetMs: 5000, probeIntervalMs: 5000 };

/** Starts a kernel for a test and stops it (and removes its data) in teardown. */
export async function startTestKernel(
  t: ExecutionContext,
  raw: Record<string, unknown> = {},
  overrides: KernelOverrides = {},
): Promise<TestKernel> {
  const dir = mkdtempSync(join(tmpdir(), "nops-kernel-test-"));
  // Test kernels share two cores with the rest of the suite: a slow event loop there is contention,
  // not overload. They do not shed on event-loop delay unless a test configures admin.overload itself,
  // and their DGE budget is TEST_DGE_BUDGET unless a test configures admin.dependencies.dge.
  const admin = (raw.admin ?? {}) as Record<string, unknown>;
  const dependencies = (admin.dependencies ?? {}) as Record<string, unknown>;
  const testAdmin = {
    ...admin,
    overload: admin.overload ?? { eventLoopDelayMs: 0 },
    dependencies: { ...dependencies, dge: dependencies.dge ?? TEST_DGE_BUDGET },
  };
  const options: KernelOptions = resolveKernelOptions({
    dataDir: dir,
    grpc: { host: "127.0.0.1", port: 0 },
    http: { host: "127.0.0.1", port: 0 },
    log: { level: "debug" },
    shutdownGraceMs: 1000,
    identity: { source: "none" },
    nats: { leaf: "off" },
    ...raw,
    admin: testAdmin,
  });
  const logs: string[] = [];
  const logDestination = new Writable({
    write(chunk: Buffer, _enc, cb) {
      logs.push(...chunk.toString("utf8").split("\n").filter(Boolean));
      cb();
    },
  });
  const kernel = await startKernel(options, { logDestination, ...overrides });
  const transports = new Map<TransportName, Transport>();
  const transport = (name: TransportName): Transport => {
    let tr = transports.get(name);
    if (!tr) {
      const grpcUrl = `http://127.0.0.1:${kernel.grpcPort}`;
      const httpUrl = `http://127.0.0.1:${kernel.httpPort}`;
      tr =
        name === "in-process"
          ? createInProcessTransport(kernel.services, { maxMessageBytes: options.limits.maxMessageBytes })
          : name === "grpc-js"
            ? createGrpcTransport({ baseUrl: grpcUrl })
            : name === "connect-json"
              ? createConnectTransport({ baseUrl: httpUrl, httpVersion: "1.1", useBinaryFormat: false })
              : name === "connect-binary-h2"
                ? createConnectTransport({ baseUrl: httpUrl, httpVersion: "2", useBinaryFormat: true })
                : name === "grpc-web"
                  ? createGrpcWebTransport({ baseUrl: httpUrl, httpVersion: "1.1" })
                  : createGrpcTransport({ baseUrl: httpUrl });
      transports.set(name, tr);
    }
    return tr;
  };
  t.teardown(async () => {
    await kernel.stop();
    rmSync(dir, { recursive: true, force: true });
    // The audit checkpoint key lives beside the data dir (audit.keyFile's default).
    rmSync(`${dir}.keys`, { recursive: true, force: true });
  });
  return { kernel, dir, logs, transport, client: (service, name) => createClient(service, transport(name)) };
}
