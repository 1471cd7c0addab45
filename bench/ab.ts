// Two builds of the kernel, which costs less per call. On a shared two-core machine the whole kernel's
// CPU per call moves by 10–30% from one process, and one minute, to the next: more than most changes,
// so one run of each build cannot tell them apart. This bench starts several kernels of each build at
// once and runs them in turn, a short h2load burst (4 x 16) each, round after round: every round
// compares the builds under the same conditions. It prints the new build's CPU per call over the base
// build's for each round and their median, and with --heap the bytes each build allocates per call (V8's
// sampling heap profiler, collected objects included), which repeats more closely than CPU time.
//
// The base is another checkout, installed and built:
//   git worktree add /tmp/base <rev> && (cd /tmp/base && npm ci && npm run build)
//   npm run build && node --import tsx bench/ab.ts --base /tmp/base [--case heartbeat|invoke]
//     [--port grpc|http] [--procs 2] [--rounds 6] [--seconds 3] [--heap]
// `--base .` measures this build against itself: the spread a change has to stand out from.
import type { ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { create, toBinary } from "@bufbuild/protobuf";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import {
  AgentRegistryService,
  HeartbeatRequestSchema,
  HeartbeatResponseSchema,
} from "../gen/nops/kernel/v1/agent_registry_pb.js";
import { InvokeRequestSchema, InvokeResponseSchema, RoutingService } from "../gen/nops/kernel/v1/routing_pb.js";
import { spawnEchoAgent } from "../test/routing/fixtures/spawn-echo-agent.js";
import { GRPC_HEADERS, grpcFrame, runH2load, withCpuPerCall } from "./lib/h2load.js";
import { LIFTED_RATE_LIMITS, listeningPort, registerEchoAgent, spawnKernel } from "./lib/kernel.js";

const { values: args } = parseArgs({
  options: {
    base: { type: "string" },
    case: { type: "string", default: "heartbeat" },
    port: { type: "string", default: "grpc" },
    procs: { type: "string", default: "2" },
    rounds: { type: "string", default: "6" },
    seconds: { type: "string", default: "3" },
    heap: { type: "boolean", default: false },
  },
});
const root = resolve(fileURLToPath(new URL("..", import.meta.url)));
if (!args.base) throw new Error("--base <checkout> is required: a built checkout of the build to compare against");
const base = resolve(args.base);
for (const dir of [root, base])
  if (!existsSync(join(dir, "dist/src/cli.js")))
    throw new Error(`${dir} has no dist/src/cli.js: run npm ci && npm run build there first`);
if (args.case !== "heartbeat" && args.case !== "invoke")
  throw new Error(`--case must be heartbeat or invoke (got ${JSON.stringify(args.case)})`);
if (args.port !== "grpc" && args.port !== "http")
  throw new Error(`--port must be grpc or http (got ${JSON.stringify(args.port)})`);
const count = (name: "procs" | "rounds" | "seconds"): number => {
  const n = Number(args[name]);
  if (!Number.isInteger(n) || n < 1) throw new Error(`--${name} must be a whole number of at least 1`);
  return n;
};
const procs = count("procs");
const rounds = count("rounds");
const seconds = count("seconds");

// As bench/invoke.ts: plaintext, limits lifted for the bench's address and tenant, the tenant at tier 1.
// The memory trim is off: a kernel left quiet between bursts would trim, and the burst after a trim costs
// up to twice the CPU per call while its heap grows back.
const CONFIG = {
  identity: { source: "none" },
  nats: { leaf: "off" },
  rateLimit: LIFTED_RATE_LIMITS,
  egress: { tenantTiers: { bench: 1 } },
  admin: { memoryTrim: { enabled: false } },
};
// Everything the bench writes (kernels' data, their key directories beside it, heap profiles) is under one
// directory, removed at the end.
const work = mkdtempSync(join(tmpdir(), "nops-bench-ab-"));

// Every kernel process started, stopped at the end whether or not it got as far as the rounds.
const started: ChildProcess[] = [];

interface Kernel {
  name: string;
  build: "base" | "new";
  process: ChildProcess;
  port: number;
  body: Uint8Array;
  responseBytes: number;
}

async function startKernel(checkout: string): Promise<{ process: ChildProcess; port: number }> {
  const child = spawnKernel(checkout, mkdtempSync(join(work, "data-")), CONFIG, {
    nodeArgs: args.heap ? ["--import", join(root, "bench/lib/heap-sampler.mjs")] : [],
    env: { NOPS_BENCH_HEAP_DIR: work },
  });
  started.push(child);
  return { process: child, port: await listeningPort(child, args.port as "grpc" | "http") };
}

const agent = await spawnEchoAgent({ name: "bench-echo" });
const kernels: Kernel[] = [];
const heartbeats: NodeJS.Timeout[] = [];
const payload = new TextEncoder().encode("x".repeat(64));
const path =
  args.case === "heartbeat"
    ? `/${AgentRegistryService.typeName}/${AgentRegistryService.method.heartbeat.name}`
    : `/${RoutingService.typeName}/${RoutingService.method.invoke.name}`;
try {
  // Base and new alternate, so neither build always runs right after the other.
  for (let p = 0; p < procs; p++) {
    for (const build of ["base", "new"] as const) {
      const k = await startKernel(build === "base" ? base : root);
      const transport = createGrpcTransport({ baseUrl: `http://127.0.0.1:${k.port}` });
      const registry = createClient(AgentRegistryService, transport);
      const id = await registerEchoAgent(registry, agent.endpoint);
      // The agent heartbeats as a live one does, or the kernel stops routing to it after a minute.
      heartbeats.push(setInterval(() => void registry.heartbeat({ tenant: "bench", id }).catch(() => undefined), 5000));
      const [body, responseBytes] =
        args.case === "heartbeat"
          ? [
              toBinary(HeartbeatRequestSchema, create(HeartbeatRequestSchema, { tenant: "bench", id })),
              toBinary(HeartbeatResponseSchema, await registry.heartbeat({ tenant: "bench", id })).length,
            ]
          : [
              toBinary(
                InvokeRequestSchema,
                create(InvokeRequestSchema, { tenant: "bench", capability: "echo", payload }),
              ),
              toBinary(
                InvokeResponseSchema,
                await createClient(RoutingService, transport).invoke({ tenant: "bench", capability: "echo", payload }),
              ).length,
            ];
      kernels.push({
        name: `${build}#${p}`,
        build,
        process: k.process,
        port: k.port,
        body: grpcFrame(body),
        responseBytes: 5 + responseBytes,
      });
    }
  }

  const burst = (k: Kernel, onMeasuring: () => void) =>
    runH2load({
      name: k.name,
      url: `http://127.0.0.1:${k.port}${path}`,
      body: k.body,
      headers: GRPC_HEADERS,
      clients: 4,
      streams: 16,
      seconds,
      warmupSeconds: 1,
      responseBytes: k.responseBytes,
      onMeasuring,
    });
  const out = (line: string) => process.stdout.write(line + "\n");
  const sum = (xs: number[]) => xs.reduce((s, x) => s + x, 0);
  const median = (xs: number[]) => {
    const s = [...xs].sort((a, b) => a - b);
    return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
  };
  out(
    `\nab bench: ${args.case} over the ${args.port} port, base ${base}, new ${root}; ` +
      `${procs} kernel(s) of each build, ${rounds} round(s) of ${seconds} s bursts (h2load 4 x 16)`,
  );
  const cpu = new Map<string, number[]>(kernels.map((k) => [k.name, []]));
  const ratios: number[] = [];
  for (let r = 0; r < rounds; r++) {
    const round: Record<"base" | "new", number[]> = { base: [], new: [] };
    for (const k of kernels) {
      const { result, cpuUs } = await withCpuPerCall([k.process.pid!], (onMeasuring) => burst(k, onMeasuring));
      if (result.errors > 0) throw new Error(`${k.name}: ${result.errors} calls failed in round ${r + 1}`);
      cpu.get(k.name)!.push(cpuUs[0]!);
      round[k.build].push(cpuUs[0]!);
    }
    ratios.push(sum(round.new) / sum(round.base));
    out(
      `round ${r + 1}: cpu per call base ${round.base.map((x) => x.toFixed(1)).join(" ")} us, ` +
        `new ${round.new.map((x) => x.toFixed(1)).join(" ")} us; new/base ${ratios[r]!.toFixed(3)}`,
    );
  }
  for (const k of kernels) out(`${k.name}: cpu per call median ${median(cpu.get(k.name)!).toFixed(1)} us`);
  out(
    `new/base cpu per call: median ${median(ratios).toFixed(3)} of ${rounds} round(s) ` +
      `(${Math.min(...ratios).toFixed(3)}–${Math.max(...ratios).toFixed(3)})`,
  );

  if (args.heap) {
    // One more burst per build, on its first kernel, with the heap sampler on.
    const bytes: Record<string, number> = {};
    for (const k of kernels.filter((k) => k.name.endsWith("#0"))) {
      const pid = k.process.pid!;
      const result = await burst(k, () => process.kill(pid, "SIGUSR2"));
      process.kill(pid, "SIGUSR2");
      const file = join(work, `heap-${pid}.json`);
      for (let waited = 0; !existsSync(file); waited += 100) {
        if (waited > 10_000) throw new Error(`${k.name} wrote no heap profile`);
        await new Promise((r) => setTimeout(r, 100));
      }
      const profile = JSON.parse(readFileSync(file, "utf8")) as { head: SampledNode };
      bytes[k.build] = total(profile.head) / Math.max(1, result.requests + result.errors);
    }
    out(
      `allocated per call: base ${(bytes.base! / 1024).toFixed(1)} KB, new ${(bytes.new! / 1024).toFixed(1)} KB; ` +
        `new/base ${(bytes.new! / bytes.base!).toFixed(3)}`,
    );
  }
} finally {
  heartbeats.forEach(clearInterval);
  await Promise.all(
    started
      .filter((child) => child.exitCode === null && child.signalCode === null)
      .map((child) => {
        const gone = new Promise((r) => child.once("exit", r));
        child.kill("SIGTERM");
        return gone;
      }),
  );
  await agent.kill();
  rmSync(work, { recursive: true, force: true });
}

interface SampledNode {
  selfSize: number;
  children: SampledNode[];
}
function total(node: SampledNode): number {
  return node.selfSize + node.children.reduce((s, c) => s + total(c), 0);
}
process.exit(0);
