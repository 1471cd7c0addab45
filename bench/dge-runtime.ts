// Reference DGE head-of-line blocking (issue 13 item 10): latency of small Classify calls over gRPC with the
// DGE idle (baseline) and while one 4 MB adversarial request (phone numbers back to back, each checked against the
// numbering plan) is classifying, in one run.
// Classification runs in worker threads, so the small calls keep their latency; on the event loop they would
// wait for the whole 4 MB classification (minutes). Prints p50/p99 and the ratio to the idle baseline.
//   node --import tsx bench/dge-runtime.ts [seconds per case]
import { availableParallelism } from "node:os";
import { systemClock } from "../src/common/clock.js";
import { createDgeClient } from "../src/clients/dge-client.js";
import { createSilentLogger } from "../src/telemetry/logger.js";
import { resolveDgeServerOptions, startDgeServer } from "../packages/reference-dge/src/index.js";
import { runLoad, type LoadResult } from "./lib/load.js";

const SECONDS = Number(process.argv[2] ?? 10);
const CONCURRENCY = 4;
const keys = { k1: "bench-dge-signing-key-0123456789abcdef" };
// The budget outlives the run, so the 4 MB request is classifying for the whole measured window.
const dge = await startDgeServer(
  { clock: systemClock, logger: createSilentLogger() },
  resolveDgeServerOptions({ port: 0, keys, classifyBudgetMs: 600_000 }),
);
const client = createDgeClient({ clock: systemClock }, { url: dge.url, protocol: "grpc", keys, maxSkewMs: 300_000 });
const small = async (i: number): Promise<void> => {
  const { classification } = await client.classify({ data: `ticket ${i}: reply to anna.smith@example.com` });
  if (!classification?.findings.length) throw new Error("small call classified without its email");
};
const load = (name: string): Promise<LoadResult> =>
  runLoad({ name, concurrency: CONCURRENCY, warmupMs: 2000, durationMs: SECONDS * 1000, call: small });

const idle = await load("small Classify, DGE idle (baseline)");
let bigDone = false;
const big = client.classify({ data: "+1 415 555 0100 ".repeat(250_000) }).then(
  () => (bigDone = true),
  () => (bigDone = true),
);
while (dge.classifyInFlight() === 0) await new Promise((r) => setTimeout(r, 10));
const busy = await load("small Classify, 4 MB adversarial running");
const stillRunning = !bigDone && dge.classifyInFlight() >= 1;

const f = (x: number): string => x.toFixed(2).padStart(8);
process.stdout.write(
  `dge runtime bench: ${availableParallelism()} classify threads, ${CONCURRENCY} small calls in flight, ` +
    `${SECONDS} s per case after 2 s warm-up, times in ms\n`,
);
process.stdout.write(`${"case".padEnd(44)}  calls errors     rps      p50      p99  p99/base\n`);
for (const r of [idle, busy]) {
  process.stdout.write(
    `${r.name.padEnd(44)}${String(r.requests).padStart(7)} ${String(r.errors).padStart(6)} ${r.rps.toFixed(0).padStart(7)}` +
      `${f(r.p50Ms)} ${f(r.p99Ms)}  ${(r.p99Ms / idle.p99Ms).toFixed(2).padStart(6)}x\n`,
  );
}
process.stdout.write(`4 MB request still classifying at the end of the window: ${stillRunning ? "yes" : "NO"}\n`);
await dge.close();
await big;
if (!stillRunning || busy.errors > 0 || busy.requests === 0) process.exit(1);
