// Tracing cost: Heartbeat over grpc-js through the kernel chain with tracing off (baseline) and
// with tracing on (instrumentation-grpc + tracing interceptor + batch export over OTLP/HTTP to a
// local sink that accepts and counts the spans). Servers run in child processes so the load
// generator has the other core. Goal: traced throughput >= 0.9 of untraced.
// A third run shows the cost without instrumentation-grpc (the kernel's tracing interceptor opens
// the server span itself). --ratio sets the root sampling ratio of the traced runs.
// Usage: node --import tsx bench/tracing.ts [--seconds 8] [--concurrency 64] [--connections 4] [--ratio 1] [--rounds 3]
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import * as http from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { registerGrpcInstrumentation } from "../src/telemetry/register-instrumentation.js";
import * as grpc from "@grpc/grpc-js";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import {
  AgentRegistryService,
  HeartbeatRequestSchema,
  HeartbeatResponseSchema,
  RegisterAgentRequestSchema,
  RegisterAgentResponseSchema,
} from "../gen/nops/kernel/v1/agent_registry_pb.js";
import { systemClock } from "../src/common/clock.js";
import { DEFAULT_KERNEL_OPTIONS } from "../src/kernel/kernel-options.js";
import { createAuditLog } from "../src/audit/audit-log.js";
import { createRegistry } from "../src/registry/registry.js";
import { createRegistryService } from "../src/registry/registry-service.js";
import { bindService } from "../src/server/bind-service.js";
import {
  correlationInterceptor,
  errorMappingInterceptor,
  loggingInterceptor,
} from "../src/server/core-interceptors.js";
import { createGrpcServer } from "../src/server/grpc-server.js";
import type { KernelInterceptor } from "../src/server/interceptor.js";
import { openDatabase } from "../src/store/database.js";
import { migrateUp } from "../src/store/migrator.js";
import { MIGRATIONS } from "../src/store/migrations/index.js";
import { createOutbox } from "../src/store/outbox.js";
import { createSqliteOutboxStore } from "../src/store/outbox-store.js";
import { createLogger } from "../src/telemetry/logger.js";
import { createTelemetry } from "../src/telemetry/telemetry.js";
import { resolveTelemetryOptions } from "../src/telemetry/telemetry-options.js";
import { rpcMetricsInterceptor } from "../src/telemetry/rpc-metrics-interceptor.js";
import { tracingInterceptor } from "../src/telemetry/tracing-interceptor.js";
import { tracingEventSink } from "../src/telemetry/tracing-event-sink.js";
import { traceDatabaseTransactions } from "../src/telemetry/trace-database-transactions.js";
import { firstLine } from "./lib/child-output.js";
import { formatResult, runLoad, type LoadResult } from "./lib/load.js";

const { values } = parseArgs({
  options: {
    seconds: { type: "string", default: "8" },
    concurrency: { type: "string", default: "64" },
    connections: { type: "string", default: "4" },
    serve: { type: "string" },
    sink: { type: "string" },
    ratio: { type: "string", default: "1" },
    rounds: { type: "string", default: "3" },
  },
});

/** Child process: the registry behind the kernel chain, traced or not, on a free port. */
async function serve(mode: string, sink: string | undefined, ratio: number): Promise<void> {
  const traced = mode !== "off";
  // "interceptor": spans from the kernel's tracing interceptor alone (instrumentation-grpc off).
  const grpcInstrumentation = mode === "interceptor" ? undefined : registerGrpcInstrumentation();
  const logger = createLogger({ level: "warn", redactPaths: [] });
  const telemetry = createTelemetry(
    resolveTelemetryOptions(traced ? { tracing: { exporter: "otlp", otlpEndpoint: sink, sampleRatio: ratio } } : {}),
    { logger, grpcInstrumentation },
  );
  const tracer = telemetry.tracer("nops-kernel");
  const dir = mkdtempSync(join(tmpdir(), "nops-bench-tracing-"));
  const db = openDatabase({ path: join(dir, "kernel.db") });
  migrateUp(db, MIGRATIONS);
  if (traced) traceDatabaseTransactions(db, tracer);
  const outbox = createOutbox(createSqliteOutboxStore(db), { source: "bench", clock: systemClock });
  const events = traced ? tracingEventSink(outbox, tracer) : outbox;
  const registry = createRegistry(
    { db, events, audit: createAuditLog(db, systemClock), clock: systemClock, logger },
    DEFAULT_KERNEL_OPTIONS.registry,
  );
  registry.start();
  const chain: KernelInterceptor[] = [
    ...(traced ? [tracingInterceptor(tracer)] : []),
    correlationInterceptor(logger.child({ component: "rpc" })),
    loggingInterceptor(),
    rpcMetricsInterceptor(telemetry.meter("nops-kernel")),
    errorMappingInterceptor(),
  ];
  const services = [
    bindService(
      AgentRegistryService,
      createRegistryService({ registry, actorOf: () => "bench", clock: systemClock }, DEFAULT_KERNEL_OPTIONS.registry),
      chain,
    ),
  ];
  const server = createGrpcServer({ services, limits: DEFAULT_KERNEL_OPTIONS.limits });
  const port = await server.listen("127.0.0.1", 0, grpc.ServerCredentials.createInsecure());
  process.stdout.write(`port ${port}\n`);
  process.once("SIGTERM", () => {
    void (async () => {
      await server.shutdown(0);
      registry.close();
      await telemetry.shutdown();
      db.close();
      rmSync(dir, { recursive: true, force: true });
      process.exit(0);
    })();
  });
}

function unary<I, O>(
  client: grpc.Client,
  path: string,
  ser: (m: I) => Buffer,
  de: (b: Buffer) => O,
  input: I,
): Promise<O> {
  return new Promise((resolve, reject) =>
    client.makeUnaryRequest(path, ser, de, input, (err, out) => (err ? reject(err) : resolve(out!))),
  );
}

async function measure(
  name: string,
  mode: string,
  ratio: number,
  sink: string,
  seconds: number,
  concurrency: number,
  connections: number,
): Promise<LoadResult> {
  const args = [
    "--import",
    "tsx",
    new URL(import.meta.url).pathname,
    "--serve",
    mode,
    "--sink",
    sink,
    "--ratio",
    String(ratio),
  ];
  const child = spawn(process.execPath, args, { stdio: ["ignore", "pipe", "inherit"] });
  try {
    const port = Number(await firstLine(child, /port (\d+)/));
    const clients = Array.from(
      { length: connections },
      () =>
        new grpc.Client(`127.0.0.1:${port}`, grpc.credentials.createInsecure(), {
          "grpc.use_local_subchannel_pool": 1,
        }),
    );
    const ids: string[] = [];
    for (let i = 0; i < concurrency; i++) {
      const res = await unary(
        clients[0]!,
        "/nops.kernel.v1.AgentRegistryService/RegisterAgent",
        (m: unknown) => Buffer.from(toBinary(RegisterAgentRequestSchema, m as never)),
        (b) => fromBinary(RegisterAgentResponseSchema, b),
        create(RegisterAgentRequestSchema, {
          tenant: "bench",
          name: `agent-${i}`,
          version: "1",
          endpoint: `127.0.0.1:${20000 + i}`,
        }),
      );
      ids.push(res.agent!.id);
    }
    const serialize = (m: unknown) => Buffer.from(toBinary(HeartbeatRequestSchema, m as never));
    const deserialize = (b: Buffer) => fromBinary(HeartbeatResponseSchema, b);
    const requests = ids.map((id) =>
      create(HeartbeatRequestSchema, { tenant: "bench", id, load: { inFlight: 1, latencyP50Ms: 5 } }),
    );
    const result = await runLoad({
      name,
      concurrency,
      warmupMs: 1500,
      durationMs: seconds * 1000,
      call: (w) =>
        unary(
          clients[w % connections]!,
          "/nops.kernel.v1.AgentRegistryService/Heartbeat",
          serialize,
          deserialize,
          requests[w]!,
        ).then(() => undefined),
    });
    for (const c of clients) c.close();
    return result;
  } finally {
    child.kill("SIGTERM");
    await new Promise((r) => child.once("exit", r));
  }
}

async function bench(): Promise<void> {
  const seconds = Number(values.seconds);
  const concurrency = Number(values.concurrency);
  const connections = Number(values.connections);
  // The OTLP sink: accepts every export and counts requests and bytes, like a collector would.
  let exports = 0;
  let bytes = 0;
  const sink = http.createServer((req, res) => {
    req.on("data", (d: Buffer) => (bytes += d.length));
    req.on("end", () => {
      exports++;
      res.writeHead(200, { "content-type": "application/json" });
      res.end("{}");
    });
  });
  await new Promise<void>((r) => sink.listen(0, "127.0.0.1", r));
  const sinkUrl = `http://127.0.0.1:${(sink.address() as AddressInfo).port}/v1/traces`;
  const ratio = Number(values.ratio);
  // The machine is shared: modes alternate within each round and the median round counts, so a
  // burst of someone else's load hits one sample, not one mode.
  const modes = [
    { mode: "off", name: "heartbeat, tracing off" },
    { mode: "traced", name: `heartbeat, tracing on, sample ${ratio}` },
    { mode: "interceptor", name: `heartbeat, interceptor only, ${ratio}` },
  ];
  const runs = new Map<string, LoadResult[]>(modes.map((m) => [m.mode, []]));
  for (let round = 0; round < Number(values.rounds); round++) {
    for (const m of modes) {
      const r = await measure(m.name, m.mode, ratio, sinkUrl, seconds, concurrency, connections);
      runs.get(m.mode)!.push(r);
      process.stdout.write(`  round ${round + 1}: ${formatResult(r)}\n`);
    }
  }
  const median = (rs: LoadResult[]): LoadResult => [...rs].sort((a, b) => a.rps - b.rps)[Math.floor(rs.length / 2)]!;
  const [off, on, lean] = modes.map((m) => median(runs.get(m.mode)!)) as [LoadResult, LoadResult, LoadResult];
  sink.close();
  process.stdout.write(
    `median of ${values.rounds} rounds:\n${formatResult(off)}\n${formatResult(on, off)}\n${formatResult(lean, off)}\n`,
  );
  process.stdout.write(`OTLP sink received ${exports} export requests, ${(bytes / 1e6).toFixed(1)} MB\n`);
  process.stdout.write(
    `tracing throughput ratio ${(on.rps / off.rps).toFixed(3)} (goal >= 0.9); without instrumentation-grpc ${(lean.rps / off.rps).toFixed(3)}\n`,
  );
}

if (values.serve) await serve(values.serve, values.sink, Number(values.ratio));
else await bench();
