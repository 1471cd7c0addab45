// Egress Guard overhead: the same outbound HTTP call (local echo server) without the guard, with
// the guard on a verdict-cache hit, and with the guard on the cold path (DGE round trips to the
// reference DGE), all in one run. Prints p50/p95/p99 and ratios to the unguarded baseline.
//   node --import tsx bench/egress-guard.ts [iterations]
import { createServer } from "node:http";
import { mkdtempSync, rmSync } from "node:fs";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { MeterProvider } from "@opentelemetry/sdk-metrics";
import { systemClock } from "../src/common/clock.js";
import { createAuditLog } from "../src/audit/audit-log.js";
import { createDgeClient } from "../src/clients/dge-client.js";
import { resolveDgeServerOptions, startDgeServer } from "../packages/reference-dge/src/dge-server.js";
import { createEgressGuard, resolveEgressGuardOptions } from "../src/egress/egress-guard.js";
import { createGuardedFetch } from "../src/egress/guarded-fetch.js";
import { openDatabase } from "../src/store/database.js";
import { migrateUp } from "../src/store/migrator.js";
import { MIGRATIONS } from "../src/store/migrations/index.js";
import { createOutbox } from "../src/store/outbox.js";
import { createSqliteOutboxStore } from "../src/store/outbox-store.js";
import { createSilentLogger } from "../src/telemetry/logger.js";

const N = Number(process.argv[2] ?? 2000);
const WARMUP = 200;
const logger = createSilentLogger();
const keys = { k1: "bench-dge-signing-key-0123456789abcdef" };

const echo = createServer((req, res) => {
  req.resume();
  req.on("end", () => res.end("ok"));
});
await new Promise<void>((r) => echo.listen(0, "127.0.0.1", r));
const url = `http://127.0.0.1:${(echo.address() as AddressInfo).port}/v1/metrics`;
const dge = await startDgeServer({ clock: systemClock, logger }, resolveDgeServerOptions({ port: 0, keys }));
const dir = mkdtempSync(join(tmpdir(), "egress-bench-"));
const db = openDatabase({ path: join(dir, "kernel.db") });
migrateUp(db, MIGRATIONS);
const meterProvider = new MeterProvider();
const guard = createEgressGuard(
  {
    clock: systemClock,
    logger,
    meter: meterProvider.getMeter("bench"),
    db,
    dge: createDgeClient({ clock: systemClock }, { url: dge.url, protocol: "grpc", keys, maxSkewMs: 300_000 }),
    events: createOutbox(createSqliteOutboxStore(db), { source: "bench", clock: systemClock }),
    audit: createAuditLog(db, systemClock),
  },
  resolveEgressGuardOptions({ tenantTiers: { acme: 2 } }),
);
const guardedFetch = createGuardedFetch(guard, "observability");
const headers = { "x-nops-tenant": "acme", "content-type": "application/json" };
const body = (i: number): string => JSON.stringify({ agent: "planner-3", latency_ms: 42, status: "ok", seq: i });

function pct(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))] ?? NaN;
}
async function measure(
  name: string,
  fn: (i: number) => Promise<unknown>,
): Promise<{ name: string; p50: number; p95: number; p99: number }> {
  for (let i = 0; i < WARMUP; i++) await fn(-1 - i);
  const xs: number[] = [];
  for (let i = 0; i < N; i++) {
    const t0 = performance.now();
    await fn(i);
    xs.push(performance.now() - t0);
  }
  return { name, p50: pct(xs, 50), p95: pct(xs, 95), p99: pct(xs, 99) };
}

const hitPayload = `/v1/metrics\n${body(0)}`;
await guardedFetch(url, { method: "POST", body: body(0), headers }); // fills the cache
const results = [
  await measure("fetch, no guard (baseline)", async () =>
    (await fetch(url, { method: "POST", body: body(0), headers })).text(),
  ),
  await measure("fetch + guard, cache hit", async () =>
    (await guardedFetch(url, { method: "POST", body: body(0), headers })).text(),
  ),
  await measure("guard.check alone, cache hit", (i) =>
    guard.check({
      tenant: "acme",
      transport: "http",
      destination: `observability:${url}`,
      dataType: "application/json",
      payload: hitPayload,
      // The whole call as the HTTP door passes it: URL, query and headers, a fresh traceparent
      // per call (left out of the classified text) and a stable tracestate (classified).
      headers: [
        [":url", "  /v1/metrics"],
        [":query", ""],
        ["content-type", "application/json"],
        ["traceparent", `00-${(i >>> 0).toString(16).padStart(32, "a")}-b7ad6b7169203331-01`],
        ["tracestate", "vendor=abc"],
        ["x-nops-tenant", "acme"],
      ],
      record: { destination: "observability:http:", dataType: "application/json" },
    }),
  ),
  await measure("fetch + guard, cold (DGE round trip)", async (i) =>
    (await guardedFetch(url, { method: "POST", body: body(1_000_000 + i), headers })).text(),
  ),
  await measure("guard.check alone, cold (DGE round trip)", (i) =>
    guard.check({
      tenant: "acme",
      transport: "http",
      destination: "observability",
      dataType: "application/json",
      payload: body(2_000_000 + i),
    }),
  ),
];
const base = results[0] ?? { p50: 1, p95: 1, p99: 1 };
const f = (x: number): string => x.toFixed(3).padStart(8);
process.stdout.write(`egress guard bench: ${N} calls per case after ${WARMUP} warm-up, times in ms\n`);
process.stdout.write(`${"case".padEnd(42)}     p50      p95      p99   p95/base p99/base\n`);
for (const r of results) {
  process.stdout.write(
    `${r.name.padEnd(42)}${f(r.p50)} ${f(r.p95)} ${f(r.p99)}   ${(r.p95 / base.p95).toFixed(2).padStart(6)}x ${(r.p99 / base.p99).toFixed(2).padStart(6)}x\n`,
  );
}
const hit = results[2];
if (hit)
  process.stdout.write(
    `guard overhead on a cache hit: p95 ${hit.p95.toFixed(3)} ms (target < 1), p99 ${hit.p99.toFixed(3)} ms (target < 2)\n`,
  );
await guard.close();
await dge.close();
echo.close();
db.close();
rmSync(dir, { recursive: true, force: true });
