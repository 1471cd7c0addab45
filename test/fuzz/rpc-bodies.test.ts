import { readdirSync } from "node:fs";
import { join } from "node:path";
import { setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";
import test from "ava";
import fc from "fast-check";
import * as grpc from "@grpc/grpc-js";
import { create, toBinary, toJsonString, type DescMethod, type DescService } from "@bufbuild/protobuf";
import { startTestKernel } from "../helpers/kernel.js";
import { arbitraryInit, mutateBytes } from "./arbitrary-message.js";

// CI runs a short pass; FUZZ_RUNS=2000 (and FUZZ_SEED to replay) runs a long one (docs/hardening.md).
const RUNS = Number(process.env.FUZZ_RUNS ?? 10);
const SEED = process.env.FUZZ_SEED === undefined ? undefined : Number(process.env.FUZZ_SEED);
// Heap left behind by the whole run, after a full GC: a leak per request would exceed it at scale.
const MAX_HEAP_GROWTH_BYTES = 48 * 1024 * 1024;

const root = new URL("../..", import.meta.url).pathname;

/** Every service descriptor generated under gen/ for the services the kernel serves. */
async function servedServices(): Promise<DescService[]> {
  const dirs = ["gen/nops/kernel/v1", "gen/nops/federation/v1", "gen/grpc/health/v1"];
  const services: DescService[] = [];
  for (const dir of dirs) {
    for (const file of readdirSync(join(root, dir)).filter((f) => f.endsWith("_pb.ts"))) {
      const mod = (await import(join(root, dir, file))) as Record<string, unknown>;
      for (const value of Object.values(mod)) {
        if (typeof value === "object" && value !== null && (value as { kind?: string }).kind === "service") {
          services.push(value as DescService);
        }
      }
    }
  }
  return services;
}

// A response that leaks internals: a stack frame, a source path or a module path.
const LEAK = /\bat [\w.<>]+ \(|\.[cm]?[jt]s:\d+|node_modules|Error: /;
const SERVER_FAULT_CODES = new Set(["internal", "unknown", "data_loss"]);
const GRPC_SERVER_FAULTS = new Set([grpc.status.INTERNAL, grpc.status.UNKNOWN, grpc.status.DATA_LOSS]);

function envelope(payload: Uint8Array): Uint8Array {
  const out = Buffer.alloc(5 + payload.length);
  out.writeUInt32BE(payload.length, 1);
  out.set(payload, 5);
  return out;
}

interface Verdict {
  status: number;
  code?: string;
  text: string;
}

async function postConnect(base: string, method: DescMethod, body: Uint8Array, json: boolean): Promise<Verdict> {
  const streaming = method.methodKind === "server_streaming";
  const contentType = `application/${streaming ? "connect+" : ""}${json ? "json" : "proto"}`;
  let res: Response;
  try {
    res = await fetch(`${base}/${method.parent.typeName}/${method.name}`, {
      method: "POST",
      headers: { "content-type": contentType, "connect-protocol-version": "1" },
      body: streaming ? envelope(body) : body,
      // A valid watch streams until its deadline: its first bytes are enough.
      signal: AbortSignal.timeout(streaming ? 400 : 5000),
    });
  } catch (err) {
    // A valid watch of a tenant with nothing to report sends its headers with its first message:
    // still silent at the timeout, it is a healthy, open stream (a unary call must answer).
    if (streaming && err instanceof DOMException && err.name === "TimeoutError") return { status: 200, text: "" };
    throw err;
  }
  let text = "";
  try {
    text = Buffer.from(await res.arrayBuffer()).toString("latin1");
  } catch {
    // aborted mid-stream: a healthy, open watch
  }
  const code = /"code":"([a-z_]+)"/.exec(text)?.[1];
  return { status: res.status, code, text };
}

function callGrpc(
  client: grpc.Client,
  method: DescMethod,
  body: Uint8Array,
): Promise<{ code: grpc.status; details: string }> {
  const path = `/${method.parent.typeName}/${method.name}`;
  const raw = (b: Buffer) => b;
  const deadline = Date.now() + 5000;
  return new Promise((resolve) => {
    if (method.methodKind === "server_streaming") {
      const call = client.makeServerStreamRequest(path, raw, raw, Buffer.from(body), new grpc.Metadata(), {
        deadline,
      });
      const timer = setTimeout(() => call.cancel(), 400);
      call.on("data", () => undefined);
      call.on("error", (e: grpc.ServiceError) => {
        clearTimeout(timer);
        resolve({ code: e.code, details: e.details });
      });
      call.on("end", () => {
        clearTimeout(timer);
        resolve({ code: grpc.status.OK, details: "" });
      });
      return;
    }
    client.makeUnaryRequest(path, raw, raw, Buffer.from(body), new grpc.Metadata(), { deadline }, (err) =>
      resolve(err ? { code: err.code ?? grpc.status.UNKNOWN, details: err.details ?? "" } : { code: 0, details: "" }),
    );
  });
}

function heapAfterGc(): number {
  setFlagsFromString("--expose-gc");
  (runInNewContext("gc") as () => void)();
  return process.memoryUsage().heapUsed;
}

test("fuzz - every RPC of every served service answers arbitrary protobuf and Connect JSON bodies without a server fault or a leak", async (t) => {
  // Long runs (FUZZ_RUNS) need more than ava's default timeout: about 40 requests per run and method.
  t.timeout(Math.max(120_000, RUNS * 2_000));
  const k = await startTestKernel(t, { rateLimit: { ipLimit: 100_000_000 }, log: { level: "fatal" } });
  const services = await servedServices();
  const methods = services
    .flatMap((s) => s.methods)
    .filter((m) => m.methodKind === "unary" || m.methodKind === "server_streaming");
  t.true(methods.length >= 20, `fuzzing ${methods.length} methods`);
  const base = `http://127.0.0.1:${k.kernel.httpPort}`;
  const grpcClient = new grpc.Client(`127.0.0.1:${k.kernel.grpcPort}`, grpc.credentials.createInsecure());
  t.teardown(() => grpcClient.close());
  const faults: string[] = [];
  const check = (where: string, v: Verdict) => {
    // UNAVAILABLE (503) is a deliberate answer, as on the gRPC side: this kernel runs without NATS,
    // so a request that passes validation on the way to the bus (Reprocess) is told to retry later.
    const fault = v.status >= 500 && v.code !== "unavailable";
    if (fault || (v.code && SERVER_FAULT_CODES.has(v.code)) || LEAK.test(v.text)) {
      faults.push(`${where}: HTTP ${v.status} ${v.text.slice(0, 200)}`);
    }
  };

  const heapBefore = heapAfterGc();
  for (const method of methods) {
    const name = `${method.parent.typeName}/${method.name}`;
    const binaryBodies = arbitraryInit(method.input).chain((init) => {
      let bytes: Uint8Array;
      try {
        bytes = toBinary(method.input, create(method.input, init as never));
      } catch {
        bytes = new Uint8Array();
      }
      return mutateBytes(bytes);
    });
    await fc.assert(
      fc.asyncProperty(binaryBodies, async (body) => {
        check(`${name} connect+proto`, await postConnect(base, method, body, false));
        const g = await callGrpc(grpcClient, method, body);
        if (GRPC_SERVER_FAULTS.has(g.code) || LEAK.test(g.details)) faults.push(`${name} grpc: ${g.code} ${g.details}`);
      }),
      { numRuns: RUNS, seed: SEED },
    );
    // Connect JSON: the message's canonical JSON, arbitrary JSON, and bytes that are not UTF-8.
    const jsonBodies = fc.oneof(
      arbitraryInit(method.input).map((init) => {
        try {
          return Buffer.from(toJsonString(method.input, create(method.input, init as never)));
        } catch {
          return Buffer.from("{}");
        }
      }),
      fc.json().map((s) => Buffer.from(s)),
      fc
        .tuple(fc.string(), fc.uint8Array({ minLength: 1, maxLength: 4 }))
        .map(([s, bad]) =>
          Buffer.concat([
            Buffer.from(`{"${s.replace(/["\\]/g, "")}":"`),
            Buffer.from(bad.map((b) => b | 0x80)),
            Buffer.from('"}'),
          ]),
        ),
    );
    await fc.assert(
      fc.asyncProperty(jsonBodies, async (body) =>
        check(`${name} connect+json`, await postConnect(base, method, body, true)),
      ),
      { numRuns: RUNS, seed: SEED },
    );
  }
  const growth = heapAfterGc() - heapBefore;
  t.deepEqual(faults.slice(0, 20), [], `${faults.length} server faults`);
  t.true(growth < MAX_HEAP_GROWTH_BYTES, `heap grew by ${Math.round(growth / 1024 / 1024)} MiB`);
  t.log(`${methods.length} methods, ${RUNS} runs per property, heap growth ${Math.round(growth / 1024)} KiB`);
});
