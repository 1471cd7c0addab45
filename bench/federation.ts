// Cross-kernel Invoke (client -> kernel A -> peer kernel B -> agent) versus local Invoke (client
// -> B -> agent), in one run, with h2load (bench/lib/h2load.ts) as the load generator (issue 14):
// the latency the peer hop adds at a fixed rate on one stream, and the saturation throughput, each
// with its ratio to the local case. Both kernels are the built kernel process, each in its own
// trust domain with the dev issuer, pinned to each other and handshaken as in production; the
// A -> B hop is mTLS with A's kernel SVID and a delegation. The client (h2load, which cannot present
// a client certificate) calls each kernel's HTTP port over TLS with an API key of the tenant, the
// same way in both cases; the agent serves mTLS with an SVID of B's CA.
//   node --import tsx bench/federation.ts [--rate 200] [--seconds 8] [--connections 4] [--streams 16]
import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { create, toBinary } from "@bufbuild/protobuf";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { FederationService, PeerState } from "../gen/nops/federation/v1/federation_pb.js";
import { ApiKeyService, Role } from "../gen/nops/kernel/v1/api_key_pb.js";
import { InvokeRequestSchema, InvokeResponseSchema, RoutingService } from "../gen/nops/kernel/v1/routing_pb.js";
import {
  developerClient,
  FAST_FEDERATION,
  getInsecure as get,
  startKernelAgent,
  type KernelAt,
} from "../test/federation/fed-fixtures.js";
import { freePort, waitFor } from "../test/helpers/processes.js";
import { GRPC_HEADERS, grpcFrame, kernelLaunch, runH2load, withCpuPerCall } from "./lib/h2load.js";
import { formatResult, type LoadResult } from "./lib/load.js";

const { values: args } = parseArgs({
  options: {
    rate: { type: "string", default: "200" },
    seconds: { type: "string", default: "8" },
    connections: { type: "string", default: "4" },
    streams: { type: "string", default: "16" },
  },
});
const rate = Number(args.rate);
const seconds = Number(args.seconds);
const connections = Number(args.connections);
const streams = Number(args.streams);
const root = fileURLToPath(new URL("..", import.meta.url));
const TENANT = "bench";
const AGREEMENT = {
  inbound: { tenants: [TENANT], capabilities: ["echo"] },
  outbound: { tenants: [TENANT], capabilities: ["echo"] },
};

interface BenchKernel extends KernelAt {
  name: string;
  spiffeId: string;
  httpPort: number;
  process: ChildProcess;
  root: string;
}

/** The built kernel as its own process, trust domain `<name>.bench`, dev issuer, limits lifted for the bench. */
async function startKernel(name: string): Promise<BenchKernel> {
  const dir = mkdtempSync(join(tmpdir(), `nops-bench-fed-${name}-`));
  const [grpcPort, httpPort] = [await freePort(), await freePort()];
  const trustDomain = `${name}.bench`;
  const config = join(dir, "kernel.json");
  writeFileSync(
    config,
    JSON.stringify({
      dataDir: join(dir, "data"),
      edgeId: name,
      trustDomain,
      grpc: { host: "127.0.0.1", port: grpcPort },
      http: { host: "127.0.0.1", port: httpPort },
      log: { level: "warn" },
      identity: { source: "dev" },
      nats: { leaf: "off" },
      // The machine is shared: the bench measures the hop, not the overload guard's shedding.
      admin: { overload: { enabled: false } },
      rateLimit: {
        ipOverrides: { "127.0.0.1": 1_000_000_000 },
        tenantTiers: { [TENANT]: 3 },
        tierLimits: { 3: 1_000_000_000 },
      },
      ...FAST_FEDERATION,
      // The tenant at tier 1: metadata may leave (as bench/invoke.ts).
      egress: { ...FAST_FEDERATION.egress, tenantTiers: { [TENANT]: 1 } },
    }),
  );
  const launch = kernelLaunch(root);
  const child = spawn(
    process.execPath,
    [...launch.nodeArgs, ...profileFlags(), join(root, "dist/src/cli.js"), "serve", "--config", config],
    { env: { ...process.env, ...launch.env }, stdio: ["ignore", "ignore", "inherit"] },
  );
  let exited: number | null | undefined;
  child.once("exit", (code) => (exited = code));
  await waitFor(
    async () => {
      if (exited !== undefined) throw new Error(`kernel ${name} exited ${exited}`);
      return (await get(`https://127.0.0.1:${httpPort}/healthz`)).status === 200;
    },
    `kernel ${name} to serve`,
    180_000,
  );
  if (exited !== undefined) throw new Error(`kernel ${name} exited ${exited}`);
  return {
    name,
    dir: join(dir, "data"),
    root: dir,
    trustDomain,
    grpcEndpoint: `127.0.0.1:${grpcPort}`,
    httpPort,
    spiffeId: `spiffe://${trustDomain}/nops/kernel/${name}`,
    process: child,
  };
}

// NOPS_BENCH_PROFILE=<dir>: the kernels write CPU profiles there when they exit.
function profileFlags(): string[] {
  const dir = process.env.NOPS_BENCH_PROFILE;
  return dir ? ["--cpu-prof", `--cpu-prof-dir=${dir}`, "--cpu-prof-interval=250"] : [];
}

/** Pins `peer` on `on` with the bench's agreement. */
async function pin(on: BenchKernel, peer: BenchKernel): Promise<void> {
  const { body } = await get(`https://127.0.0.1:${peer.httpPort}/federation/bundle`);
  await developerClient(on, FederationService).addPeer({
    spiffeId: peer.spiffeId,
    grpcEndpoint: peer.grpcEndpoint,
    httpEndpoint: `https://127.0.0.1:${peer.httpPort}`,
    bundle: body,
    agreement: AGREEMENT,
  });
}

/** An OPERATOR API key of the bench tenant on `kernel` (what the client presents). */
async function apiKey(kernel: BenchKernel): Promise<string> {
  const { secret } = await developerClient(kernel, ApiKeyService).createApiKey({
    tenant: TENANT,
    name: "bench",
    role: Role.OPERATOR,
  });
  return secret;
}

async function main(): Promise<void> {
  if (!process.env.NOPS_BENCH_SKIP_BUILD)
    execFileSync("npm", ["run", "build", "--silent"], { cwd: root, stdio: "inherit" });
  const kernels: BenchKernel[] = [];
  let agent: { close(): Promise<void> } | undefined;
  try {
    const a = await startKernel("edge-a");
    kernels.push(a);
    const b = await startKernel("edge-b");
    kernels.push(b);
    await pin(a, b);
    await pin(b, a);
    const { peer } = await developerClient(a, FederationService).connectPeer({
      spiffeId: b.spiffeId,
      transport: "grpc",
    });
    if (peer?.state !== PeerState.ESTABLISHED) throw new Error("the handshake from edge-a to edge-b failed");
    agent = await startKernelAgent(b, TENANT, "echo", "echo");
    const keys = { local: await apiKey(b), federated: await apiKey(a) };
    const ports = { local: b.httpPort, federated: a.httpPort };
    const payload = new TextEncoder().encode("x".repeat(64));
    const invokeReq = { tenant: TENANT, capability: "echo", payload };
    const client = (which: "local" | "federated") =>
      createClient(
        RoutingService,
        createGrpcTransport({
          baseUrl: `https://127.0.0.1:${ports[which]}`,
          nodeOptions: { rejectUnauthorized: false },
        }),
      );
    const invoke = (which: "local" | "federated") =>
      client(which).invoke(invokeReq, { headers: { "x-api-key": keys[which] }, timeoutMs: 30_000 });
    // A routes echo to B once it has read B's catalog. The size of each answer, from one call each,
    // so h2load's runs count only calls answered.
    let federatedAnswer: Awaited<ReturnType<typeof invoke>> | undefined;
    await waitFor(
      async () => {
        federatedAnswer = await invoke("federated");
        return true;
      },
      "edge-a to route echo to edge-b",
      120_000,
    );
    const localAnswer = await invoke("local");
    if (federatedAnswer?.agentName !== "echo" || localAnswer.agentName !== "echo")
      throw new Error("an Invoke was not answered by the echo agent");
    const body = grpcFrame(toBinary(InvokeRequestSchema, create(InvokeRequestSchema, invokeReq)));
    const cases = {
      local: {
        name: "local: client -> B -> agent",
        responseBytes: 5 + toBinary(InvokeResponseSchema, localAnswer).length,
      },
      federated: {
        name: "federated: client -> A -> B -> agent",
        responseBytes: 5 + toBinary(InvokeResponseSchema, federatedAnswer).length,
      },
    };
    const at = (which: "local" | "federated", closed: boolean, onMeasuring?: () => void) =>
      runH2load({
        ...cases[which],
        ...(onMeasuring ? { onMeasuring } : {}),
        url: `https://127.0.0.1:${ports[which]}/${RoutingService.typeName}/Invoke`,
        body,
        headers: [...GRPC_HEADERS, `x-api-key: ${keys[which]}`],
        ...(closed
          ? { clients: connections, streams, seconds, warmupSeconds: 2 }
          : { clients: 1, streams: 1, rps: rate, seconds, warmupSeconds: 1 }),
      });
    const fixed = { local: await at("local", false), federated: await at("federated", false) };
    const sat: Partial<Record<"local" | "federated", LoadResult>> = {};
    const cpu: Record<string, number> = {};
    for (const which of ["local", "federated"] as const) {
      const { result, cpuUs } = await withCpuPerCall([a.process.pid!, b.process.pid!], (onMeasuring) =>
        at(which, true, onMeasuring),
      );
      sat[which] = result;
      cpu[`${which} A`] = cpuUs[0]!;
      cpu[`${which} B`] = cpuUs[1]!;
    }
    const f = (n: number): string => `${n >= 0 ? "+" : ""}${n.toFixed(3)}`;
    const x = (n: number, d: number): string => (n / d).toFixed(2);
    const out = (line: string) => process.stdout.write(line + "\n");
    out(
      `\nfederation bench (h2load, TLS + API key to the first kernel; A -> B mTLS): 64-byte payload; ` +
        `${rate} rps on one stream for ${seconds} s; saturation ${connections} x ${streams}`,
    );
    out(formatResult(fixed.local));
    out(formatResult(fixed.federated, fixed.local));
    out(
      `added by the peer hop at ${rate} rps: p50 ${f(fixed.federated.p50Ms - fixed.local.p50Ms)} ms ` +
        `(x${x(fixed.federated.p50Ms, fixed.local.p50Ms)} of local)  ` +
        `p99 ${f(fixed.federated.p99Ms - fixed.local.p99Ms)} ms (x${x(fixed.federated.p99Ms, fixed.local.p99Ms)} of local)`,
    );
    out(formatResult(sat.local!));
    out(formatResult(sat.federated!, sat.local));
    out(
      `cpu per call at saturation: local B ${cpu["local B"]!.toFixed(0)} us  ` +
        `federated A ${cpu["federated A"]!.toFixed(0)} us + B ${cpu["federated B"]!.toFixed(0)} us`,
    );
    // A case no call of which was answered measured nothing: the bench itself is broken.
    const silent = [...Object.values(fixed), ...Object.values(sat)].filter((r) => r.requests === 0);
    if (silent.length > 0) throw new Error(`no call answered in: ${silent.map((r) => r.name).join(", ")}`);
  } finally {
    for (const k of kernels) k.process.kill("SIGTERM");
    await Promise.all(
      kernels.map((k) =>
        k.process.exitCode === null && k.process.signalCode === null
          ? new Promise((r) => k.process.once("exit", r))
          : Promise.resolve(),
      ),
    );
    await agent?.close();
    for (const k of kernels) rmSync(k.root, { recursive: true, force: true });
  }
}

await main();
process.exit(0);
