// Heartbeat through the kernel against bare servers answering the same method, in one run, with
// h2load (bench/lib/h2load.ts) as the load generator: over grpc-js against a bare grpc-js echo, and
// over connect-node (gRPC and Connect protocols) against a bare connect-node server. Heartbeat over
// SPIFFE mTLS against the same call in plaintext is measured with the Node load generator (h2load
// cannot present a client certificate); both legs of that ratio use the same generator. A reference
// with no target, bench/h2-echo-server.ts, answers over node:http2 without grpc-js: the grpc-js echo
// is shown as a ratio of it.
// Usage: node --import tsx bench/heartbeat.ts [--seconds 8] [--connections 4] [--streams 16]
import { spawn, execFileSync, type ChildProcess } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import * as grpc from "@grpc/grpc-js";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import {
  AgentRegistryService,
  HeartbeatRequestSchema,
  HeartbeatResponseSchema,
} from "../gen/nops/kernel/v1/agent_registry_pb.js";
import { firstLine } from "./lib/child-output.js";
import { CONNECT_HEADERS, GRPC_HEADERS, grpcFrame, runH2load, withCpuPerCall, type H2Options } from "./lib/h2load.js";
import { watchKernelMemory } from "./lib/kernel-memory.js";
import { LIFTED_RATE_LIMITS, spawnKernel } from "./lib/kernel.js";
import { formatResult, runLoad, type LoadResult } from "./lib/load.js";

const { values } = parseArgs({
  options: {
    seconds: { type: "string", default: "8" },
    connections: { type: "string", default: "4" },
    streams: { type: "string", default: "16" },
    rounds: { type: "string", default: "2" },
  },
});
const seconds = Number(values.seconds);
const connections = Number(values.connections);
const streams = Number(values.streams);
const rounds = Number(values.rounds);
const root = new URL("..", import.meta.url).pathname;
const HEARTBEAT = `/${AgentRegistryService.typeName}/Heartbeat`;

function grpcHeartbeatCaller(port: number, ids: string[], tlsDir?: string): (worker: number) => Promise<void> {
  const credentials = tlsDir
    ? grpc.credentials.createSsl(
        readFileSync(join(tlsDir, "bundle.pem")),
        readFileSync(join(tlsDir, "svid.key")),
        readFileSync(join(tlsDir, "svid.pem")),
      )
    : grpc.credentials.createInsecure();
  const host = tlsDir ? "localhost" : "127.0.0.1";
  // Separate subchannel pools: one HTTP/2 connection per client.
  const clients = Array.from(
    { length: connections },
    () => new grpc.Client(`${host}:${port}`, credentials, { "grpc.use_local_subchannel_pool": 1 }),
  );
  const serialize = (m: unknown) => Buffer.from(toBinary(HeartbeatRequestSchema, m as never));
  const deserialize = (b: Buffer) => fromBinary(HeartbeatResponseSchema, b);
  let n = 0;
  return (worker) =>
    new Promise((resolve, reject) => {
      const req = create(HeartbeatRequestSchema, {
        tenant: "bench",
        id: ids[n++ % ids.length] ?? "",
        load: { inFlight: 1, cpu: 0.2 },
      });
      clients[worker % connections]!.makeUnaryRequest(HEARTBEAT, serialize, deserialize, req, (err) =>
        err ? reject(err) : resolve(),
      );
    });
}

function startKernel(dataDir: string, identity: "none" | "dev"): ChildProcess {
  return spawnKernel(
    root,
    dataDir,
    { rateLimit: LIFTED_RATE_LIMITS },
    { env: { NOPS_LOG_LEVEL: "info", NOPS_IDENTITY_SOURCE: identity, NOPS_NATS_LEAF: "off" } },
  );
}

async function ports(kernel: ChildProcess): Promise<{ grpcPort: number; httpPort: number }> {
  const started = await firstLine(kernel, /("grpc":"[^"]+","http":"[^"]+")/);
  return {
    grpcPort: Number(/"grpc":"[^"]*:(\d+)"/.exec(started)?.[1]),
    httpPort: Number(/"http":"[^"]*:(\d+)"/.exec(started)?.[1]),
  };
}

async function registerAgents(port: number, count: number, devIdentity?: string): Promise<string[]> {
  const registry = createClient(
    AgentRegistryService,
    createGrpcTransport({
      baseUrl: devIdentity ? `https://localhost:${port}` : `http://127.0.0.1:${port}`,
      nodeOptions:
        devIdentity === undefined
          ? undefined
          : {
              ca: readFileSync(join(devIdentity, "bundle.pem")),
              cert: readFileSync(join(devIdentity, "svid.pem")),
              key: readFileSync(join(devIdentity, "svid.key")),
            },
    }),
  );
  const ids: string[] = [];
  for (let i = 0; i < count; i++) {
    const { agent } = await registry.registerAgent({
      tenant: "bench",
      name: `agent-${i}`,
      version: "1",
      endpoint: `127.0.0.1:${20000 + i}`,
      capabilities: [{ name: "echo" }],
    });
    ids.push(agent!.id);
  }
  return ids;
}

async function main(): Promise<void> {
  execFileSync("npm", ["run", "build", "--silent"], { cwd: root, stdio: "inherit" });
  const dataDir = mkdtempSync(join(tmpdir(), "nops-bench-"));
  const mtlsDir = mkdtempSync(join(tmpdir(), "nops-bench-mtls-"));
  const tsx = (file: string) =>
    spawn(process.execPath, ["--import", "tsx", join(root, file)], { stdio: ["ignore", "pipe", "inherit"] });
  const echo = tsx("bench/echo-server.ts");
  const h2Echo = tsx("bench/h2-echo-server.ts");
  const connectEcho = tsx("bench/connect-echo-server.ts");
  const kernel = startKernel(dataDir, "none");
  const memory = watchKernelMemory(kernel);
  const mtlsKernel = startKernel(mtlsDir, "dev");
  try {
    const echoPort = Number(await firstLine(echo, /^(\d+)\n/m));
    const h2EchoPort = Number(await firstLine(h2Echo, /^(\d+)\n/m));
    const connectEchoPort = Number(await firstLine(connectEcho, /^(\d+)\n/m));
    const { grpcPort, httpPort } = await ports(kernel);
    const mtls = await ports(mtlsKernel);
    const devIdentity = join(mtlsDir, "dev-identity");
    await memory.idle();
    const ids = await registerAgents(grpcPort, 100);
    const mtlsIds = await registerAgents(mtls.grpcPort, 100, devIdentity);

    // Every h2load request heartbeats the same agent: the body is one pre-encoded message.
    const request = toBinary(
      HeartbeatRequestSchema,
      create(HeartbeatRequestSchema, { tenant: "bench", id: ids[0]!, load: { inFlight: 1, cpu: 0.2 } }),
    );
    const answer = await createClient(
      AgentRegistryService,
      createGrpcTransport({ baseUrl: `http://127.0.0.1:${grpcPort}` }),
    ).heartbeat({ tenant: "bench", id: ids[0]!, load: { inFlight: 1, cpu: 0.2 } });
    const answerBytes = toBinary(HeartbeatResponseSchema, answer).length;
    const load = { clients: connections, streams, seconds, warmupSeconds: 2 };
    // The serving process's CPU per call in each run.
    const cpuPerCall = new Map<LoadResult, number>();
    const serving = async (server: ChildProcess, options: H2Options): Promise<LoadResult> => {
      const { result, cpuUs } = await withCpuPerCall([server.pid!], (onMeasuring) =>
        runH2load({ ...options, onMeasuring }),
      );
      cpuPerCall.set(result, cpuUs[0]!);
      return result;
    };
    const grpcCase = (name: string, server: ChildProcess, port: number) =>
      serving(server, {
        ...load,
        name,
        url: `http://127.0.0.1:${port}${HEARTBEAT}`,
        body: grpcFrame(request),
        headers: GRPC_HEADERS,
        responseBytes: 5 + answerBytes,
      });
    const connectCase = (name: string, server: ChildProcess, port: number) =>
      serving(server, {
        ...load,
        name,
        url: `http://127.0.0.1:${port}${HEARTBEAT}`,
        body: request,
        headers: CONNECT_HEADERS,
      });
    const results: LoadResult[] = [];
    const nodeLoad = { concurrency: connections * streams, warmupMs: 2000, durationMs: seconds * 1000 };
    // Interleave baselines and cases and keep each one's better run, so a burst of background
    // load on the shared machine does not decide a ratio.
    for (let round = 0; round < rounds; round++) {
      results.push(await grpcCase("echo: bare grpc-js", echo, echoPort));
      results.push(await grpcCase("echo: node:http2 alone (reference)", h2Echo, h2EchoPort));
      results.push(await grpcCase("Heartbeat over grpc-js", kernel, grpcPort));
      results.push(await grpcCase("echo: bare connect-node, gRPC protocol", connectEcho, connectEchoPort));
      results.push(await grpcCase("Heartbeat over connect-node, gRPC protocol", kernel, httpPort));
      results.push(await connectCase("echo: bare connect-node, Connect protocol", connectEcho, connectEchoPort));
      results.push(await connectCase("Heartbeat over connect-node, Connect proto", kernel, httpPort));
      results.push(
        await runLoad({ ...nodeLoad, name: "plaintext (Node generator)", call: grpcHeartbeatCaller(grpcPort, ids) }),
      );
      results.push(
        await runLoad({
          ...nodeLoad,
          name: "mTLS + SPIFFE authz (Node generator)",
          call: grpcHeartbeatCaller(mtls.grpcPort, mtlsIds, devIdentity),
        }),
      );
    }
    const best = (name: string): LoadResult => results.filter((r) => r.name === name).sort((a, b) => b.rps - a.rps)[0]!;
    const out = (line: string) => process.stdout.write(line + "\n");
    out(
      `\nheartbeat bench (h2load): ${connections} connections x ${streams} streams, ${seconds}s per case, best of ${rounds}`,
    );
    const grpcEcho = best("echo: bare grpc-js");
    const connectGrpcEcho = best("echo: bare connect-node, gRPC protocol");
    const connectEchoResult = best("echo: bare connect-node, Connect protocol");
    const h2EchoResult = best("echo: node:http2 alone (reference)");
    out(formatResult(h2EchoResult));
    out(formatResult(grpcEcho, h2EchoResult));
    out(formatResult(best("Heartbeat over grpc-js"), grpcEcho, 0.75));
    out(formatResult(connectGrpcEcho));
    out(formatResult(best("Heartbeat over connect-node, gRPC protocol"), connectGrpcEcho, 0.8));
    out(formatResult(best("Heartbeat over connect-node, gRPC protocol"), grpcEcho));
    out(formatResult(connectEchoResult));
    out(formatResult(best("Heartbeat over connect-node, Connect proto"), connectEchoResult, 0.8));
    out(formatResult(best("mTLS + SPIFFE authz (Node generator)"), best("plaintext (Node generator)"), 0.9));
    const cpu = (name: string) => `${name} ${cpuPerCall.get(best(name))!.toFixed(0)} us`;
    out(
      `cpu per call of the serving process in those runs: ${[
        "echo: node:http2 alone (reference)",
        "echo: bare grpc-js",
        "Heartbeat over grpc-js",
        "echo: bare connect-node, gRPC protocol",
        "Heartbeat over connect-node, gRPC protocol",
      ]
        .map(cpu)
        .join(", ")}`,
    );
    out(await memory.afterLoad());
    // A case no call of which was answered measured nothing: the bench itself is broken.
    const silent = results.filter((r) => r.requests === 0).map((r) => r.name);
    if (silent.length > 0) throw new Error(`no call answered in: ${[...new Set(silent)].join(", ")}`);
  } finally {
    echo.kill("SIGKILL");
    h2Echo.kill("SIGKILL");
    connectEcho.kill("SIGKILL");
    for (const k of [kernel, mtlsKernel]) {
      k.kill("SIGTERM");
      await new Promise((r) => k.once("exit", r));
    }
    rmSync(dataDir, { recursive: true, force: true });
    rmSync(mtlsDir, { recursive: true, force: true });
  }
}

await main();
process.exit(0);
