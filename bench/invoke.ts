// Invoke through the kernel's RoutingService (served on a bare grpc-js server in its own process)
// to an echo agent process, versus calling the agent's AgentService.Handle directly, in one run:
// added p50/p99 latency per hop at ~1,000 rps, and the saturation throughput ratio.
//   node --import tsx bench/invoke.ts [--rate 1000] [--seconds 5] [--concurrency 64]
import { spawn } from "node:child_process";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import * as grpc from "@grpc/grpc-js";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { createHandlerContext } from "@connectrpc/connect";
import { createNoopMeter } from "@opentelemetry/api";
import { AgentService, HandleRequestSchema, HandleResponseSchema } from "../gen/nops/agent/v1/agent_pb.js";
import { AgentSchema, AgentStatus } from "../gen/nops/kernel/v1/agent_registry_pb.js";
import { InvokeRequestSchema, InvokeResponseSchema, RoutingService } from "../gen/nops/kernel/v1/routing_pb.js";
import { systemClock } from "../src/common/clock.js";
import { createRouter } from "../src/routing/router.js";
import { resolveRoutingOptions } from "../src/routing/routing-options.js";
import { createRoutingService, resolveRoutingServiceOptions } from "../src/routing/routing-service.js";
import { createSilentLogger } from "../src/telemetry/logger.js";
import { spawnEchoAgent } from "../test/routing/fixtures/spawn-echo-agent.js";

const { values: args } = parseArgs({
  options: {
    "serve-kernel": { type: "string" },
    rate: { type: "string", default: "1000" },
    seconds: { type: "string", default: "5" },
    concurrency: { type: "string", default: "64" },
  },
});

/** Kernel mode: RoutingService.Invoke on grpc-js, routing to the agent at `agentEndpoint`. */
async function serveKernel(agentEndpoint: string): Promise<void> {
  const agent = create(AgentSchema, {
    id: "bench-agent", tenant: "bench", name: "echo", endpoint: agentEndpoint, status: AgentStatus.HEALTHY,
    capabilities: [{ name: "echo", version: "1.0.0" }], heartbeatAt: timestampFromMs(Date.now()),
  });
  const router = createRouter(
    {
      agents: { listRoutable: () => [agent] }, credentials: grpc.credentials.createInsecure(), clock: systemClock,
      logger: createSilentLogger(), meter: createNoopMeter(),
    },
    resolveRoutingOptions({}),
  );
  const service = createRoutingService({ router }, resolveRoutingServiceOptions({}));
  const server = new grpc.Server();
  // A minimal grpc-js adapter for one unary method (the lead's bind-service does this for real).
  server.addService(
    {
      invoke: {
        path: `/${RoutingService.typeName}/Invoke`, requestStream: false, responseStream: false,
        requestDeserialize: (b: Buffer) => fromBinary(InvokeRequestSchema, b),
        requestSerialize: (m) => Buffer.from(toBinary(InvokeRequestSchema, m as never)),
        responseSerialize: (m) => Buffer.from(toBinary(InvokeResponseSchema, create(InvokeResponseSchema, m as never))),
        responseDeserialize: (b: Buffer) => fromBinary(InvokeResponseSchema, b),
      },
    },
    {
      invoke(call: grpc.ServerUnaryCall<ReturnType<typeof fromBinary<typeof InvokeRequestSchema>>, unknown>, cb: grpc.sendUnaryData<unknown>) {
        const deadline = call.getDeadline();
        const ms = deadline instanceof Date ? deadline.getTime() : deadline;
        const ctx = createHandlerContext({
          service: RoutingService, method: RoutingService.method.invoke, protocolName: "grpc", requestMethod: "POST",
          url: `/${RoutingService.typeName}/Invoke`, timeoutMs: Number.isFinite(ms) ? ms - Date.now() : undefined,
          requestHeader: Object.fromEntries(Object.entries(call.metadata.getMap()).map(([k, v]) => [k, String(v)])),
        });
        Promise.resolve(service.invoke(call.request, ctx)).then(
          (res) => cb(null, res),
          (e: unknown) => cb({ code: grpc.status.UNAVAILABLE, details: String(e) }),
        );
      },
    },
  );
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))),
  );
  process.stdout.write(`READY ${port}\n`);
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
  const kernel = spawn(process.execPath, ["--import", "tsx", fileURLToPath(import.meta.url), "--serve-kernel", agent.endpoint], { stdio: ["ignore", "pipe", "inherit"] });
  try {
    const kernelPort = await new Promise<number>((resolve, reject) => {
      kernel.once("exit", (c) => reject(new Error(`kernel exited ${c}`)));
      createInterface({ input: kernel.stdout }).on("line", (l) => {
        const m = /^READY (\d+)$/.exec(l);
        if (m) resolve(Number(m[1]));
      });
    });
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
    kernel.kill("SIGKILL");
    await agent.kill();
  }
}

if (args["serve-kernel"]) await serveKernel(args["serve-kernel"]);
else await main();
