// The kernel -> agent hop's client, four ways (issue 18 item 2): the same unary AgentService.Handle
// call to one echo agent process with grpc-js (the router's former client), connect-node's gRPC
// transport, the router's client (src/routing/agent-h2-client.ts: pooled `node:http2` sessions with
// deadlines, cancellation, status mapping and the pre-send hook), and bare pooled `node:http2`
// sessions framing gRPC by hand (the lower bound of any client). Closed loop, the same
// pre-built request message, the same in-flight count. "CPU per call" is this (client) process's
// user+system time over the measured window divided by the calls answered: the client's own cost,
// independent of how the agent and the client share the cores. Rounds are interleaved; the spread
// across rounds is printed.
//   node --import tsx bench/agent-client.ts [--seconds 5] [--rounds 3] [--concurrency 64] [--sessions 4]
import * as http2 from "node:http2";
import { parseArgs } from "node:util";
import * as grpc from "@grpc/grpc-js";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import {
  AgentService,
  HandleRequestSchema,
  HandleResponseSchema,
  type HandleRequest,
  type HandleResponse,
} from "../gen/nops/agent/v1/agent_pb.js";
import { systemClock } from "../src/common/clock.js";
import { createAgentH2Client } from "../src/routing/agent-h2-client.js";
import { createSilentLogger } from "../src/telemetry/logger.js";
import { spawnEchoAgent } from "../test/routing/fixtures/spawn-echo-agent.js";
import { grpcFrame } from "./lib/h2load.js";
import { runLoad, type LoadResult } from "./lib/load.js";

const { values: args } = parseArgs({
  options: {
    seconds: { type: "string", default: "5" },
    rounds: { type: "string", default: "3" },
    concurrency: { type: "string", default: "64" },
    sessions: { type: "string", default: "4" },
  },
});
const seconds = Number(args.seconds);
const rounds = Number(args.rounds);
const concurrency = Number(args.concurrency);
const sessions = Number(args.sessions);
const HANDLE_PATH = `/${AgentService.typeName}/${AgentService.method.handle.name}`;
const TIMEOUT_MS = 10_000;

type Call = (request: HandleRequest) => Promise<HandleResponse>;
interface ClientCase {
  name: string;
  call: Call;
  close(): void;
}

// What a grpc-js client interceptor costs by itself (the Egress Guard's is one): passes everything on.
const passThrough: grpc.Interceptor = (options, nextCall) =>
  new grpc.InterceptingCall(nextCall(options), {
    start: (metadata, listener, next) => next(metadata, listener),
    sendMessage: (message, next) => next(message),
    halfClose: (next) => next(),
  });

/** grpc-js: one `grpc.Client` per connection (the pool keeps one channel per endpoint). */
function grpcJs(endpoint: string, interceptors: grpc.Interceptor[] = []): ClientCase {
  const clients = Array.from(
    { length: sessions },
    (_, i) =>
      // A distinct channel option per client: grpc-js would otherwise share one subchannel.
      new grpc.Client(endpoint, grpc.credentials.createInsecure(), {
        "grpc.enable_retries": 0,
        "bench.channel": i,
        interceptors,
      }),
  );
  let next = 0;
  const serialize = (m: HandleRequest) => Buffer.from(toBinary(HandleRequestSchema, m));
  const deserialize = (b: Buffer) => fromBinary(HandleResponseSchema, b);
  return {
    name: `grpc-js client (${sessions} channels)${interceptors.length ? " + pass-through interceptor" : ""}`,
    call: (request) =>
      new Promise((resolve, reject) => {
        clients[next++ % sessions]!.makeUnaryRequest(
          HANDLE_PATH,
          serialize,
          deserialize,
          request,
          new grpc.Metadata(),
          { deadline: Date.now() + TIMEOUT_MS },
          (err, value) => (err ? reject(err) : resolve(value!)),
        );
      }),
    close: () => clients.forEach((c) => c.close()),
  };
}

/** connect-node's gRPC transport over HTTP/2 (it keeps its own session). */
function connectNode(endpoint: string): ClientCase {
  const transports = Array.from({ length: sessions }, () =>
    createClient(AgentService, createGrpcTransport({ baseUrl: `http://${endpoint}` })),
  );
  let next = 0;
  return {
    name: `connect-node gRPC transport (${sessions} sessions)`,
    call: (request) => transports[next++ % sessions]!.handle(request, { timeoutMs: TIMEOUT_MS }),
    close: () => undefined,
  };
}

/** The router's agent client with a pass-through pre-send hook (the Egress Guard's place). */
function routerClient(endpoint: string): ClientCase {
  const client = createAgentH2Client(
    { target: endpoint, preSend: () => undefined, clock: systemClock, logger: createSilentLogger() },
    { sessions, maxMessageBytes: 4 << 20, maxReconnectBackoffMs: 1000 },
  );
  const encode = (m: HandleRequest) => toBinary(HandleRequestSchema, m);
  const decode = (b: Uint8Array) => fromBinary(HandleResponseSchema, b);
  const signal = new AbortController().signal;
  return {
    name: `router's agent-h2-client (up to ${sessions} sessions)`,
    call: (request) =>
      client.unary(HANDLE_PATH, request, encode, decode, { deadline: Date.now() + TIMEOUT_MS, headers: {}, signal }),
    close: () => client.close(),
  };
}

/** Bare node:http2 sessions, gRPC framed by hand (no interceptors, no status mapping beyond grpc-status). */
function nodeHttp2(endpoint: string): ClientCase {
  const pool = Array.from({ length: sessions }, () => http2.connect(`http://${endpoint}`));
  let next = 0;
  const headers = {
    ":method": "POST",
    ":path": HANDLE_PATH,
    "content-type": "application/grpc+proto",
    te: "trailers",
    "grpc-timeout": `${TIMEOUT_MS}m`,
  };
  return {
    name: `node:http2 pooled sessions (${sessions})`,
    call: (request) =>
      new Promise((resolve, reject) => {
        const stream = pool[next++ % sessions]!.request(headers);
        const chunks: Buffer[] = [];
        let grpcStatus: string | undefined;
        stream.on("data", (c: Buffer) => chunks.push(c));
        stream.on("trailers", (t: http2.IncomingHttpHeaders) => (grpcStatus = String(t["grpc-status"])));
        stream.on("error", reject);
        stream.on("end", () => {
          if (grpcStatus !== "0") return reject(new Error(`grpc-status ${grpcStatus}`));
          const body = Buffer.concat(chunks);
          resolve(fromBinary(HandleResponseSchema, body.subarray(5, 5 + body.readUInt32BE(1))));
        });
        stream.end(grpcFrame(toBinary(HandleRequestSchema, request)));
      }),
    close: () => pool.forEach((s) => s.close()),
  };
}

async function measure(c: ClientCase, request: HandleRequest): Promise<LoadResult & { cpuUs: number }> {
  let before = process.cpuUsage();
  const result = await runLoad({
    name: c.name,
    concurrency,
    warmupMs: 1000,
    durationMs: seconds * 1000,
    onMeasuring: () => (before = process.cpuUsage()),
    call: async () => void (await c.call(request)),
  });
  const used = process.cpuUsage(before);
  return { ...result, cpuUs: (used.user + used.system) / Math.max(1, result.requests) };
}

async function main(): Promise<void> {
  const agent = await spawnEchoAgent({ name: "bench-echo" });
  const payload = new TextEncoder().encode("x".repeat(64));
  const request = create(HandleRequestSchema, {
    invocation: { capability: "echo", tenant: "bench", payload, contentType: "text/plain" },
  });
  const cases = [
    grpcJs(agent.endpoint),
    grpcJs(agent.endpoint, [passThrough]),
    connectNode(agent.endpoint),
    routerClient(agent.endpoint),
    nodeHttp2(agent.endpoint),
  ];
  const results = new Map<string, (LoadResult & { cpuUs: number })[]>();
  try {
    for (const c of cases) {
      const answer = await c.call(request);
      if (answer.payload.length !== payload.length) throw new Error(`${c.name}: wrong echo`);
    }
    for (let r = 0; r < rounds; r++) {
      for (const c of cases) {
        const res = await measure(c, request);
        if (res.requests === 0) throw new Error(`${c.name}: no call answered`);
        results.set(c.name, [...(results.get(c.name) ?? []), res]);
      }
    }
  } finally {
    cases.forEach((c) => c.close());
    await agent.kill();
  }
  const out = (line: string) => process.stdout.write(line + "\n");
  const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
  const span = (xs: number[], digits = 0) => `${Math.min(...xs).toFixed(digits)}–${Math.max(...xs).toFixed(digits)}`;
  out(
    `\nagent client bench: AgentService.Handle to one echo agent process, 64-byte payload, ${concurrency} in flight, ` +
      `${seconds} s x ${rounds} interleaved rounds (median, [min–max])`,
  );
  const base = median(results.get(cases[0]!.name)!.map((r) => r.rps));
  for (const c of cases) {
    const rs = results.get(c.name)!;
    const rps = rs.map((r) => r.rps);
    const cpu = rs.map((r) => r.cpuUs);
    out(
      `${c.name.padEnd(56)} ${median(rps).toFixed(0).padStart(6)} req/s [${span(rps)}]  ` +
        `ratio ${(median(rps) / base).toFixed(2)}  client CPU/call ${median(cpu).toFixed(0)} us [${span(cpu)}]  ` +
        `p50 ${median(rs.map((r) => r.p50Ms)).toFixed(2)} ms  p99 ${median(rs.map((r) => r.p99Ms)).toFixed(2)} ms  ` +
        `errors ${rs.reduce((n, r) => n + r.errors, 0)}`,
    );
  }
}

await main();
process.exit(0);
