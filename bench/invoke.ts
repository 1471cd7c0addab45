// Invoke through the kernel (the built kernel process, full interceptor chain and Egress Guard)
// to an echo agent process, versus calling the agent's AgentService.Handle directly, in one run:
// added p50/p99 latency per hop at ~1,000 rps, and the saturation throughput ratio.
//   node --import tsx bench/invoke.ts [--rate 1000] [--seconds 5] [--concurrency 64]
import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import * as grpc from "@grpc/grpc-js";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { AgentService, HandleRequestSchema, HandleResponseSchema } from "../gen/nops/agent/v1/agent_pb.js";
import { AgentRegistryService } from "../gen/nops/kernel/v1/agent_registry_pb.js";
import { InvokeRequestSchema, InvokeResponseSchema, RoutingService } from "../gen/nops/kernel/v1/routing_pb.js";
import { spawnEchoAgent } from "../test/routing/fixtures/spawn-echo-agent.js";

const { values: args } = parseArgs({
  options: {
    rate: { type: "string", default: "1000" },
    seconds: { type: "string", default: "5" },
    concurrency: { type: "string", default: "64" },
  },
});

const root = fileURLToPath(new URL("..", import.meta.url));

// The whole kernel (built), plaintext so the figure is the routing hop, with the limits lifted
// for the bench's one address and tenant and the tenant at tier 1 (metadata may leave).
const BENCH_CONFIG = {
  identity: { source: "none" },
  nats: { leaf: "off" },
  rateLimit: { ipOverrides: { "127.0.0.1": 1_000_000_000 }, tenantTiers: { bench: 3 }, tierLimits: { 3: 1_000_000_000 } },
  egress: { tenantTiers: { bench: 1 } },
  ...(process.env.NOPS_BENCH_NO_DGE ? { dge: { enabled: false } } : {}),
};

async function startKernel(): Promise<{ process: ChildProcess; grpcPort: number }> {
  execFileSync("npm", ["run", "build", "--silent"], { cwd: root, stdio: "inherit" });
  const dataDir = mkdtempSync(join(tmpdir(), "nops-bench-invoke-"));
  const config = join(dataDir, "bench.json");
  writeFileSync(config, JSON.stringify(BENCH_CONFIG));
  const child = spawn(process.execPath, [...(process.env.NOPS_BENCH_PROFILE ? ["--cpu-prof", `--cpu-prof-dir=${process.env.NOPS_BENCH_PROFILE}`] : []), join(root, "dist/src/cli.js"), "serve", "--config", config], {
    env: { ...process.env, NOPS_DATA_DIR: dataDir, NOPS_GRPC_PORT: "0", NOPS_HTTP_PORT: "0" },
    stdio: ["ignore", "pipe", "inherit"],
  });
  const grpcPort = await new Promise<number>((resolve, reject) => {
    child.once("exit", (c) => reject(new Error(`kernel exited ${c}`)));
    createInterface({ input: child.stdout }).on("line", (l) => {
      const m = /"grpc":"[^"]*:(\d+)"/.exec(l);
      if (m) resolve(Number(m[1]));
    });
  });
  return { process: child, grpcPort };
}

type Call = () => Promise<void>;

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? NaN;
}

/** Open-loop load at `rate` rps for `seconds`; latencies in ms. */
async function fixedRate(call: Call, rate: number, seconds: number): Promise<{ p50: number; p99: number; errors: number; sent: number }> {
  const latencies: number[] = [];
  let errors = 0;
  let sent = 0;
  const pending: Array<Promise<void>> = [];
  const start = performance.now();
  const total = rate * seconds;
  while (sent < total) {
    const due = Math.floor(((performance.now() - start) / 1000) * rate);
    while (sent < Math.min(due, total)) {
      sent++;
      const t0 = performance.now();
      pending.push(call().then(() => void latencies.push(performance.now() - t0), () => void errors++));
    }
    await new Promise((r) => setTimeout(r, 1));
  }
  await Promise.all(pending);
  latencies.sort((a, b) => a - b);
  return { p50: percentile(latencies, 50), p99: percentile(latencies, 99), errors, sent };
}

/** Closed-loop load with `concurrency` callers for `seconds`; requests per second. */
async function saturation(call: Call, concurrency: number, seconds: number): Promise<number> {
  let done = 0;
  const end = performance.now() + seconds * 1000;
  await Promise.all(Array.from({ length: concurrency }, async () => {
    while (performance.now() < end) {
      await call().catch(() => undefined);
      done++;
    }
  }));
  return done / seconds;
}

function unary<Req, Res>(client: grpc.Client, path: string, ser: (m: Req) => Buffer, de: (b: Buffer) => Res, req: Req): Promise<Res> {
  return new Promise((resolve, reject) => {
    client.makeUnaryRequest(path, ser, de, req, new grpc.Metadata(), { deadline: Date.now() + 5_000 }, (err, res) => (err ? reject(err) : resolve(res!)));
  });
}

async function main(): Promise<void> {
  const rate = Number(args.rate);
  const seconds = Number(args.seconds);
  const concurrency = Number(args.concurrency);
  const agent = await spawnEchoAgent({ name: "bench-echo" });
  const { process: kernel, grpcPort: kernelPort } = await startKernel();
  try {
    const registry = createClient(AgentRegistryService, createGrpcTransport({ baseUrl: `http://127.0.0.1:${kernelPort}` }));
    await registry.registerAgent({ tenant: "bench", name: "echo", version: "1", endpoint: agent.endpoint, capabilities: [{ name: "echo", version: "1.0.0" }] });
    const payload = new TextEncoder().encode("x".repeat(64));
    const direct = new grpc.Client(agent.endpoint, grpc.credentials.createInsecure());
    const viaKernel = new grpc.Client(`127.0.0.1:${kernelPort}`, grpc.credentials.createInsecure());
    const handleReq = create(HandleRequestSchema, { invocation: { capability: "echo", tenant: "bench", payload } });
    const invokeReq = create(InvokeRequestSchema, { tenant: "bench", capability: "echo", payload });
    const callDirect: Call = async () => {
      await unary(direct, `/${AgentService.typeName}/Handle`, (m: typeof handleReq) => Buffer.from(toBinary(HandleRequestSchema, m)), (b) => fromBinary(HandleResponseSchema, b), handleReq);
    };
    const callKernel: Call = async () => {
      await unary(viaKernel, `/${RoutingService.typeName}/Invoke`, (m: typeof invokeReq) => Buffer.from(toBinary(InvokeRequestSchema, m)), (b) => fromBinary(InvokeResponseSchema, b), invokeReq);
    };
    // Warm up connections and JIT on both paths.
    await saturation(callDirect, 8, 1);
    await saturation(callKernel, 8, 1);
    const d = await fixedRate(callDirect, rate, seconds);
    const k = await fixedRate(callKernel, rate, seconds);
    const dSat = await saturation(callDirect, concurrency, seconds);
    const kSat = await saturation(callKernel, concurrency, seconds);
    const f = (n: number): string => n.toFixed(3);
    process.stdout.write(
      [
        `invoke bench: ${rate} rps for ${seconds} s, 64-byte payload, saturation with ${concurrency} callers`,
        `direct  agent.Handle   p50 ${f(d.p50)} ms  p99 ${f(d.p99)} ms  errors ${d.errors}/${d.sent}`,
        `kernel  Routing.Invoke p50 ${f(k.p50)} ms  p99 ${f(k.p99)} ms  errors ${k.errors}/${k.sent}`,
        `added per hop          p50 ${f(k.p50 - d.p50)} ms (goal < 0.5)  p99 ${f(k.p99 - d.p99)} ms (goal < 2)`,
        `saturation  direct ${dSat.toFixed(0)} rps  kernel ${kSat.toFixed(0)} rps  ratio ${(kSat / dSat).toFixed(3)}`,
      ].join("\n") + "\n",
    );
    direct.close();
    viaKernel.close();
  } finally {
    kernel.kill("SIGTERM");
    await agent.kill();
  }
}

await main();
process.exit(0);
