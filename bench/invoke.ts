// Invoke through the kernel (the built kernel process, full interceptor chain and Egress Guard)
// to an echo agent process, versus calling the agent's AgentService.Handle directly, in one run,
// with h2load (bench/lib/h2load.ts) as the load generator: added p50/p99 latency per hop at a
// fixed rate on one stream, and the saturation throughput ratios. A third case, a bare grpc-js
// forwarder (bench/grpc-forwarder.ts), is the floor of any gRPC hop on this machine: what a
// router with no work of its own would add.
//   node --import tsx bench/invoke.ts [--rate 200] [--seconds 8] [--connections 4] [--streams 16]
import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { create, toBinary } from "@bufbuild/protobuf";
import { AgentService, HandleRequestSchema, HandleResponseSchema } from "../gen/nops/agent/v1/agent_pb.js";
import { AgentRegistryService } from "../gen/nops/kernel/v1/agent_registry_pb.js";
import { InvokeRequestSchema, InvokeResponseSchema, RoutingService } from "../gen/nops/kernel/v1/routing_pb.js";
import { spawnEchoAgent } from "../test/routing/fixtures/spawn-echo-agent.js";
import { firstLine } from "./lib/child-output.js";
import { GRPC_HEADERS, grpcFrame, runH2load, withCpuPerCall } from "./lib/h2load.js";
import { LIFTED_RATE_LIMITS, listeningPort, registerEchoAgent, spawnKernel } from "./lib/kernel.js";
import { watchKernelMemory } from "./lib/kernel-memory.js";
import { formatResult, type LoadResult } from "./lib/load.js";

const { values: args } = parseArgs({
  options: {
    rate: { type: "string", default: "200" },
    seconds: { type: "string", default: "8" },
    connections: { type: "string", default: "4" },
    streams: { type: "string", default: "16" },
  },
});

const connections = Number(args.connections);
const streams = Number(args.streams);
const root = fileURLToPath(new URL("..", import.meta.url));

// The whole kernel (built), plaintext so the figure is the routing hop, with the limits lifted
// for the bench's one address and tenant and the tenant at tier 1 (metadata may leave).
const BENCH_CONFIG = {
  identity: { source: "none" },
  nats: { leaf: "off" },
  rateLimit: LIFTED_RATE_LIMITS,
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
  const child = spawnKernel(root, dataDir, BENCH_CONFIG, { nodeArgs: profileFlags() });
  const grpcPort = await listeningPort(child, "grpc");
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

async function main(): Promise<void> {
  const rate = Number(args.rate);
  const seconds = Number(args.seconds);
  const agent = await spawnEchoAgent({ name: "bench-echo" });
  const { process: kernel, grpcPort: kernelPort } = await startKernel();
  const memory = watchKernelMemory(kernel);
  const forwarder = startForwarder(agent.endpoint);
  let heartbeats: NodeJS.Timeout | undefined;
  try {
    const forwarderPort = await forwarder.port;
    const registry = createClient(
      AgentRegistryService,
      createGrpcTransport({ baseUrl: `http://127.0.0.1:${kernelPort}` }),
    );
    const agentId = await registerEchoAgent(registry, agent.endpoint);
    // The agent heartbeats as a live one does: a minute without (registry.zombieAfterMs) and the kernel stops
    // routing to it, and the idle wait and the cases take longer than that.
    heartbeats = setInterval(() => {
      registry.heartbeat({ tenant: "bench", id: agentId }).catch((e: unknown) => {
        process.stderr.write(`bench agent heartbeat failed: ${String(e)}\n`);
      });
    }, 5_000);
    await memory.idle();
    const payload = new TextEncoder().encode("x".repeat(64));
    const handleBody = grpcFrame(
      toBinary(
        HandleRequestSchema,
        create(HandleRequestSchema, { invocation: { capability: "echo", tenant: "bench", payload } }),
      ),
    );
    const invokeBody = grpcFrame(
      toBinary(InvokeRequestSchema, create(InvokeRequestSchema, { tenant: "bench", capability: "echo", payload })),
    );
    // The size of each answer, from one call each, so h2load's runs count only calls answered.
    const viaKernel = createClient(RoutingService, createGrpcTransport({ baseUrl: `http://127.0.0.1:${kernelPort}` }));
    const viaForwarder = createClient(
      RoutingService,
      createGrpcTransport({ baseUrl: `http://127.0.0.1:${forwarderPort}` }),
    );
    const direct = createClient(AgentService, createGrpcTransport({ baseUrl: `http://${agent.endpoint}` }));
    const invokeReq = { tenant: "bench", capability: "echo", payload };
    const kernelBytes = 5 + toBinary(InvokeResponseSchema, await viaKernel.invoke(invokeReq)).length;
    const forwarderBytes = 5 + toBinary(InvokeResponseSchema, await viaForwarder.invoke(invokeReq)).length;
    const directBytes =
      5 +
      toBinary(
        HandleResponseSchema,
        await direct.handle({ invocation: { capability: "echo", tenant: "bench", payload } }),
      ).length;
    const cases = {
      direct: {
        url: `http://${agent.endpoint}/${AgentService.typeName}/Handle`,
        body: handleBody,
        responseBytes: directBytes,
      },
      floor: {
        url: `http://127.0.0.1:${forwarderPort}/${RoutingService.typeName}/Invoke`,
        body: invokeBody,
        responseBytes: forwarderBytes,
      },
      kernel: {
        url: `http://127.0.0.1:${kernelPort}/${RoutingService.typeName}/Invoke`,
        body: invokeBody,
        responseBytes: kernelBytes,
      },
    };
    const names = {
      direct: "direct: agent.Handle",
      floor: "floor: bare forwarder Invoke",
      kernel: "kernel: Routing.Invoke",
    };
    const pids = { direct: agent.pid, floor: forwarder.process.pid!, kernel: kernel.pid! };
    const at = async (which: keyof typeof cases, closed: boolean, onMeasuring?: () => void) =>
      runH2load({
        ...cases[which],
        name: names[which],
        headers: GRPC_HEADERS,
        ...(onMeasuring ? { onMeasuring } : {}),
        ...(closed
          ? { clients: connections, streams, seconds, warmupSeconds: 2 }
          : { clients: 1, streams: 1, rps: rate, seconds, warmupSeconds: 1 }),
      });
    const fixed = {
      direct: await at("direct", false),
      floor: await at("floor", false),
      kernel: await at("kernel", false),
    };
    const cpu: Record<string, number> = {};
    const sat: Record<string, LoadResult> = {};
    for (const which of ["direct", "floor", "kernel"] as const) {
      const { result, cpuUs } = await withCpuPerCall([pids[which]], (onMeasuring) => at(which, true, onMeasuring));
      sat[which] = result;
      cpu[which] = cpuUs[0]!;
    }
    const f = (n: number): string => n.toFixed(3);
    const out = (line: string) => process.stdout.write(line + "\n");
    out(
      `\ninvoke bench (h2load): 64-byte payload; ${rate} rps on one stream for ${seconds} s; saturation ${connections} x ${streams}`,
    );
    out(formatResult(fixed.direct));
    out(formatResult(fixed.floor, fixed.direct));
    out(formatResult(fixed.kernel, fixed.direct));
    const added = (r: LoadResult) =>
      `p50 +${f(r.p50Ms - fixed.direct.p50Ms)} ms  p99 +${f(r.p99Ms - fixed.direct.p99Ms)} ms`;
    out(`added over direct at ${rate} rps: kernel ${added(fixed.kernel)} (targets p50 <= 0.35, p99 <= 1.5)`);
    out(`added over direct at ${rate} rps: floor  ${added(fixed.floor)}`);
    out(formatResult(sat.direct!));
    out(formatResult(sat.floor!, sat.direct, 0.45));
    out(formatResult(sat.kernel!, sat.floor, 0.85));
    out(formatResult(sat.kernel!, sat.direct));
    out(
      `cpu per call: agent ${cpu.direct!.toFixed(0)} us  floor ${cpu.floor!.toFixed(0)} us  kernel ${cpu.kernel!.toFixed(0)} us`,
    );
    out(await memory.afterLoad());
    // A case no call of which was answered measured nothing: the bench itself is broken.
    const silent = [...Object.values(fixed), ...Object.values(sat)].filter((r) => r.requests === 0);
    if (silent.length > 0) throw new Error(`no call answered in: ${silent.map((r) => r.name).join(", ")}`);
  } finally {
    clearInterval(heartbeats);
    forwarder.process.kill("SIGTERM");
    kernel.kill("SIGTERM");
    await agent.kill();
  }
}

await main();
process.exit(0);
