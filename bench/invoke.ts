// Invoke through the kernel (the built kernel process, full interceptor chain and Egress Guard)
// to an echo agent process, versus calling the agent's AgentService.Handle directly, in one run:
// added p50/p99 latency per hop at ~1,000 rps, and the saturation throughput ratio. A third
// case, a bare grpc-js forwarder (bench/grpc-forwarder.ts), is the floor of any gRPC hop on
// this machine: what a router with no work of its own would add.
//   node --import tsx bench/invoke.ts [--rate 1000] [--seconds 5] [--concurrency 64]
import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
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
import { firstLine } from "./lib/child-output.js";

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
  rateLimit: {
    ipOverrides: { "127.0.0.1": 1_000_000_000 },
    tenantTiers: { bench: 3 },
    tierLimits: { 3: 1_000_000_000 },
  },
  egress: { tenantTiers: { bench: 1 } },
  ...(process.env.NOPS_BENCH_NO_DGE ? { dge: { enabled: false } } : {}),
};

// NOPS_BENCH_PROFILE=<dir>: the kernel and the forwarder write CPU profiles there when they exit.
function profileFlags(): string[] {
  const dir = process.env.NOPS_BENCH_PROFILE;
  return dir ? ["--cpu-prof", `--cpu-prof-dir=${dir}`, "--cpu-prof-interval=250"] : [];
}

async function startKernel(): Promise<{ process: ChildProcess; grpcPort: number }> {
  if (!process.env.NOPS_BENCH_SKIP_BUILD)
    execFileSync("npm", ["run", "build", "--silent"], { cwd: root, stdio: "inherit" });
  const dataDir = mkdtempSync(join(tmpdir(), "nops-bench-invoke-"));
  const config = join(dataDir, "bench.json");
  writeFileSync(config, JSON.stringify(BENCH_CONFIG));
  const child = spawn(
    process.execPath,
    [...profileFlags(), join(root, "dist/src/cli.js"), "serve", "--config", config],
    {
      env: { ...process.env, NOPS_DATA_DIR: dataDir, NOPS_GRPC_PORT: "0", NOPS_HTTP_PORT: "0" },
      stdio: ["ignore", "pipe", "inherit"],
    },
  );
  const grpcPort = await new Promise<number>((resolve, reject) => {
    child.once("exit", (c) => reject(new Error(`kernel exited ${c}`)));
    createInterface({ input: child.stdout }).on("line", (l) => {
      const m = /"grpc":"[^"]*:(\d+)"/.exec(l);
      if (m) resolve(Number(m[1]));
    });
  });
  return { process: child, grpcPort };
}

function startForwarder(agentEndpoint: string): { process: ChildProcess; port: Promise<number> } {
  const child = spawn(
    process.execPath,
    [...profileFlags(), "--import", "tsx", join(root, "bench/grpc-forwarder.ts"), agentEndpoint],
    { stdio: ["ignore", "pipe", "inherit"] },
  );
  return { process: child, port: firstLine(child, /^(\d+)\n/).then(Number) };
}

type Call = () => Promise<void>;

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? NaN;
}

/** Open-loop load at `rate` rps for `seconds`; latencies in ms. */
async function fixedRate(
  call: Call,
  rate: number,
  seconds: number,
): Promise<{ p50: number; p99: number; errors: number; sent: number }> {
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
      pending.push(
        call().then(
          () => void latencies.push(performance.now() - t0),
          () => void errors++,
        ),
      );
    }
    await new Promise((r) => setTimeout(r, 1));
  }
  await Promise.all(pending);
  latencies.sort((a, b) => a - b);
  return { p50: percentile(latencies, 50), p99: percentile(latencies, 99), errors, sent };
}

/** CPU time (user + system) a process has used so far, ms (Linux /proc; 10 ms ticks). */
function cpuMs(pid: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, "utf8")
    .replace(/^.*\) /, "")
    .split(" ");
  return ((Number(fields[11]) + Number(fields[12])) * 1000) / 100;
}

/**
 * Closed-loop load with `concurrency` callers for `seconds`: requests per second, and the CPU
 * the middle process (`pid`) spent per request, µs, which does not depend on how the three
 * processes share the two cores.
 */
async function saturation(
  call: Call,
  concurrency: number,
  seconds: number,
  pid?: number,
): Promise<{ rps: number; cpuUsPerCall: number }> {
  let done = 0;
  const cpuBefore = pid ? cpuMs(pid) : 0;
  const end = performance.now() + seconds * 1000;
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (performance.now() < end) {
        await call().catch(() => undefined);
        done++;
      }
    }),
  );
  return { rps: done / seconds, cpuUsPerCall: pid ? ((cpuMs(pid) - cpuBefore) * 1000) / done : NaN };
}

function unary<Req, Res>(
  client: grpc.Client,
  path: string,
  ser: (m: Req) => Buffer,
  de: (b: Buffer) => Res,
  req: Req,
): Promise<Res> {
  return new Promise((resolve, reject) => {
    client.makeUnaryRequest(path, ser, de, req, new grpc.Metadata(), { deadline: Date.now() + 5_000 }, (err, res) =>
      err ? reject(err) : resolve(res!),
    );
  });
}

async function main(): Promise<void> {
  const rate = Number(args.rate);
  const seconds = Number(args.seconds);
  const concurrency = Number(args.concurrency);
  const agent = await spawnEchoAgent({ name: "bench-echo" });
  const { process: kernel, grpcPort: kernelPort } = await startKernel();
  const forwarder = startForwarder(agent.endpoint);
  try {
    const forwarderPort = await forwarder.port;
    const registry = createClient(
      AgentRegistryService,
      createGrpcTransport({ baseUrl: `http://127.0.0.1:${kernelPort}` }),
    );
    await registry.registerAgent({
      tenant: "bench",
      name: "echo",
      version: "1",
      endpoint: agent.endpoint,
      capabilities: [{ name: "echo", version: "1.0.0" }],
    });
    const payload = new TextEncoder().encode("x".repeat(64));
    const direct = new grpc.Client(agent.endpoint, grpc.credentials.createInsecure());
    const viaKernel = new grpc.Client(`127.0.0.1:${kernelPort}`, grpc.credentials.createInsecure());
    const viaForwarder = new grpc.Client(`127.0.0.1:${forwarderPort}`, grpc.credentials.createInsecure());
    const handleReq = create(HandleRequestSchema, { invocation: { capability: "echo", tenant: "bench", payload } });
    const invokeReq = create(InvokeRequestSchema, { tenant: "bench", capability: "echo", payload });
    const callDirect: Call = async () => {
      await unary(
        direct,
        `/${AgentService.typeName}/Handle`,
        (m: typeof handleReq) => Buffer.from(toBinary(HandleRequestSchema, m)),
        (b) => fromBinary(HandleResponseSchema, b),
        handleReq,
      );
    };
    const invoke =
      (client: grpc.Client): Call =>
      async () => {
        await unary(
          client,
          `/${RoutingService.typeName}/Invoke`,
          (m: typeof invokeReq) => Buffer.from(toBinary(InvokeRequestSchema, m)),
          (b) => fromBinary(InvokeResponseSchema, b),
          invokeReq,
        );
      };
    const callKernel = invoke(viaKernel);
    const callForwarder = invoke(viaForwarder);
    // Warm up connections and JIT on every path.
    for (const call of [callDirect, callForwarder, callKernel]) await saturation(call, 8, 1);
    const d = await fixedRate(callDirect, rate, seconds);
    const fw = await fixedRate(callForwarder, rate, seconds);
    const k = await fixedRate(callKernel, rate, seconds);
    const { rps: dSat, cpuUsPerCall: agentCpu } = await saturation(callDirect, concurrency, seconds, agent.pid);
    const { rps: fwSat, cpuUsPerCall: fwCpu } = await saturation(
      callForwarder,
      concurrency,
      seconds,
      forwarder.process.pid,
    );
    const { rps: kSat, cpuUsPerCall: kCpu } = await saturation(callKernel, concurrency, seconds, kernel.pid);
    const f = (n: number): string => n.toFixed(3);
    process.stdout.write(
      [
        `invoke bench: ${rate} rps for ${seconds} s, 64-byte payload, saturation with ${concurrency} callers`,
        `direct  agent.Handle   p50 ${f(d.p50)} ms  p99 ${f(d.p99)} ms  errors ${d.errors}/${d.sent}`,
        `floor   bare forwarder p50 ${f(fw.p50)} ms  p99 ${f(fw.p99)} ms  errors ${fw.errors}/${fw.sent}`,
        `kernel  Routing.Invoke p50 ${f(k.p50)} ms  p99 ${f(k.p99)} ms  errors ${k.errors}/${k.sent}`,
        `added per hop, kernel  p50 ${f(k.p50 - d.p50)} ms (goal < 0.5)  p99 ${f(k.p99 - d.p99)} ms (goal < 2)`,
        `added per hop, floor   p50 ${f(fw.p50 - d.p50)} ms  p99 ${f(fw.p99 - d.p99)} ms`,
        `cpu per call  agent ${agentCpu.toFixed(0)} us  floor ${fwCpu.toFixed(0)} us  kernel ${kCpu.toFixed(0)} us (${(kCpu / fwCpu).toFixed(2)}x the floor)`,
        `saturation  direct ${dSat.toFixed(0)} rps  floor ${fwSat.toFixed(0)} rps (ratio ${(fwSat / dSat).toFixed(3)})  kernel ${kSat.toFixed(0)} rps (ratio ${(kSat / dSat).toFixed(3)}, ${(kSat / fwSat).toFixed(3)} of the floor)`,
      ].join("\n") + "\n",
    );
    direct.close();
    viaKernel.close();
    viaForwarder.close();
  } finally {
    forwarder.process.kill("SIGTERM");
    kernel.kill("SIGTERM");
    await agent.kill();
  }
}

await main();
process.exit(0);
