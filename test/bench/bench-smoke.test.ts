// The bench's smoke run (correctness of the bench, not its numbers): every case starts its
// processes, drives load with its generator, prints its figures and ratios, and answers calls.
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import test from "ava";

const root = new URL("../..", import.meta.url).pathname;

test("bench - npm run bench -- --smoke runs every case and prints its ratios", async (t) => {
  t.timeout(600_000);
  const run = await promisify(execFile)(process.execPath, ["--import", "tsx", "bench/run.ts", "--smoke"], {
    cwd: root,
    timeout: 540_000,
    maxBuffer: 16 * 1024 * 1024,
  }).catch((error: { stdout?: string; stderr?: string; code?: number }) => error);
  const out = `${run.stdout ?? ""}${run.stderr ?? ""}`;
  t.false("code" in run && run.code !== 0, out);
  for (const file of [
    "heartbeat.ts",
    "event-bus.ts",
    "egress-guard.ts",
    "dge-runtime.ts",
    "invoke.ts",
    "agent-client.ts",
    "chain.ts",
    "tracing.ts",
    "mcp.ts",
    "federation.ts",
    "hub-latency.ts",
  ])
    t.true(out.includes(`=== bench/${file} ===`), `${file} ran`);
  t.regex(out, /echo: bare grpc-js .* ratio \d+\.\d+ of echo: node:http2 alone \(reference\)/);
  t.regex(out, /Heartbeat over grpc-js .* ratio \d+\.\d+ of echo: bare grpc-js/);
  t.regex(out, /cpu per call of the serving process in those runs: .*Heartbeat over grpc-js \d+ us/);
  t.regex(out, /Heartbeat over connect-node, gRPC protocol .* ratio \d+\.\d+ of echo: bare connect-node/);
  t.regex(out, /kernel: Routing\.Invoke .* ratio \d+\.\d+ of floor: bare forwarder Invoke/);
  t.regex(out, /kernel RSS: idle \d+ MiB, after the bench \d+ MiB, after its idle trim (\(none [a-z 0-9]+\) )?\d+ MiB/);
  t.regex(out, /node:http2 pooled sessions .* client CPU\/call \d+ us/);
  t.regex(out, /federated: client -> A -> B -> agent .* ratio \d+\.\d+ of local: client -> B -> agent/);
  t.regex(out, /added by the peer hop at \d+ rps: p50 [+-]\d+\.\d+ ms .* p99 [+-]\d+\.\d+ ms/);
  t.regex(out, /kernel A Publish ack -> kernel B subscriber +p50 +\d+\.\d+ ms +p99 +\d+\.\d+ ms .*\(n=100\)/);
  t.regex(out, /ratio kernel\/baseline: p50 \d+\.\d+x {2}p99 \d+\.\d+x {2}\(sent 100, Publish errors 0;/);
  t.regex(out, /no caller deadline \(capped\) +CPU per call \d+\.\d+ us/);
});

test("bench - bench/ab.ts compares two builds round by round, CPU and allocation per call", async (t) => {
  t.timeout(180_000);
  // This build against itself: the tool works; the figures are whatever the machine gives.
  const run = await promisify(execFile)(
    process.execPath,
    ["--import", "tsx", "bench/ab.ts", "--base", ".", "--procs", "1", "--rounds", "2", "--seconds", "1", "--heap"],
    { cwd: root, timeout: 150_000, maxBuffer: 4 * 1024 * 1024 },
  ).catch((error: { stdout?: string; stderr?: string; code?: number }) => error);
  const out = `${run.stdout ?? ""}${run.stderr ?? ""}`;
  t.false("code" in run && run.code !== 0, out);
  t.regex(out, /round 2: cpu per call base \d+\.\d us, new \d+\.\d us; new\/base \d+\.\d{3}/);
  t.regex(out, /new\/base cpu per call: median \d+\.\d{3} of 2 round\(s\)/);
  t.regex(out, /allocated per call: base \d+\.\d KB, new \d+\.\d KB; new\/base \d+\.\d{3}/);
});
