import { Redis } from "ioredis";
import test, { type ExecutionContext } from "ava";
import { createManualClock } from "../../src/common/clock.js";
import { createDgeCache, type DgeInvalidation } from "../../src/egress/dge-cache.js";
import { silent, spawnRedis, waitUntil } from "../fixtures/dge-helpers.js";

const opts = { ttlMs: 300_000, maxEntries: 100, keyPrefix: "nops:dge:", channel: "nops:dge:invalidate" };
const verdict = { allow: true, reason: "allowed", classification: "D1", findings: {}, policyVersion: "v1" };

/** Three connections (two kernels' clients and a subscriber) to a Redis of the test's own, closed at its end. */
async function redisConnections(t: ExecutionContext): Promise<[Redis, Redis, Redis]> {
  const { port } = await spawnRedis(t);
  const conn = (): Redis => new Redis({ port, host: "127.0.0.1", maxRetriesPerRequest: 1 });
  const conns: [Redis, Redis, Redis] = [conn(), conn(), conn()];
  t.teardown(() => conns.forEach((c) => c.disconnect()));
  return conns;
}

test("dge cache - in-process only: entries expire after the 5-minute TTL (fake clock)", async (t) => {
  const clock = createManualClock();
  const cache = createDgeCache({ clock, logger: silent }, opts);
  await cache.setVerdict("acme", "k", verdict, 600_000);
  t.deepEqual(await cache.getVerdict("acme", "k"), verdict);
  clock.advance(300_001);
  t.is(await cache.getVerdict("acme", "k"), undefined);
  t.is(cache.hitRate(), 0.5);
});

test("dge cache - shared through Redis, invalidated in other kernels via pub/sub", async (t) => {
  const [ra, rb, sb] = await redisConnections(t);
  const clock = createManualClock();
  const seen: [DgeInvalidation, string][] = [];
  const a = createDgeCache({ clock, logger: silent, redis: ra }, opts);
  const b = createDgeCache(
    { clock, logger: silent, redis: rb, subscriber: sb, onInvalidated: (i, o) => seen.push([i, o]) },
    opts,
  );
  await waitUntil(async () => ((await ra.pubsub("NUMSUB", opts.channel)) as [string, number])[1] === 1, "subscription");
  await a.setPolicy("acme", "1", { version: "v1", ttlMs: 300_000 });
  t.deepEqual(await b.getPolicy("acme", "1"), { version: "v1", ttlMs: 300_000 }, "b reads what a wrote");
  t.true(Number(await ra.pttl("nops:dge:policy:acme:1")) <= 300_000);
  await a.invalidate({ tenant: "acme", tier: "", reason: "policy changed" });
  await waitUntil(() => seen.length === 1, "invalidation on b");
  t.deepEqual(seen[0], [{ tenant: "acme", tier: "", reason: "policy changed" }, "pubsub"]);
  t.is(await b.getPolicy("acme", "1"), undefined, "gone from b's LRU and from Redis");
  await b.close();
});

test("dge cache - invalidating every tenant at a tier drops their policies here, in Redis and in other kernels", async (t) => {
  const [ra, rb, sb] = await redisConnections(t);
  const clock = createManualClock();
  const seen: DgeInvalidation[] = [];
  const a = createDgeCache({ clock, logger: silent, redis: ra }, opts);
  const b = createDgeCache(
    { clock, logger: silent, redis: rb, subscriber: sb, onInvalidated: (i) => seen.push(i) },
    opts,
  );
  await waitUntil(async () => ((await ra.pubsub("NUMSUB", opts.channel)) as [string, number])[1] === 1, "subscription");
  const policy = { version: "v1", ttlMs: 300_000 };
  for (const [tenant, tier] of [
    ["acme", "1"],
    ["globex", "1"],
    ["globex", "2"],
  ] as const) {
    await a.setPolicy(tenant, tier, policy);
    t.deepEqual(await b.getPolicy(tenant, tier), policy, "b holds its own copy");
  }
  await a.setVerdict("acme", "k", verdict, 300_000);
  await a.invalidate({ tenant: "", tier: "1", reason: "tier 1 default changed" });
  await waitUntil(() => seen.length === 1, "invalidation on b");
  t.deepEqual(seen[0], { tenant: "", tier: "1", reason: "tier 1 default changed" });
  for (const c of [a, b]) {
    t.is(c.peekPolicy("acme", "1"), undefined);
    t.is(c.peekPolicy("globex", "1"), undefined);
  }
  t.is(a.peekVerdict("acme", "k"), undefined);
  t.is(await ra.exists("nops:dge:policy:acme:1", "nops:dge:policy:globex:1"), 0, "gone from Redis");
  t.deepEqual(await b.getPolicy("globex", "2"), policy, "another tier is kept");
  await b.close();
});

test("dge cache - a Redis outage is logged once, not once per lookup, and its end once", async (t) => {
  const { Writable } = await import("node:stream");
  const { createLogger } = await import("../../src/telemetry/logger.js");
  const lines: { msg: string }[] = [];
  const logger = createLogger(
    { level: "info", redactPaths: [] },
    new Writable({
      write(chunk: Buffer, _enc, cb) {
        for (const l of chunk.toString("utf8").split("\n").filter(Boolean))
          lines.push(JSON.parse(l) as { msg: string });
        cb();
      },
    }),
  );
  let down = true;
  // A Redis whose commands fail (what the kernel's client does while its breaker is open).
  const redis = {
    get: () => (down ? Promise.reject(new Error("redis circuit open")) : Promise.resolve(null)),
    set: () => (down ? Promise.reject(new Error("redis circuit open")) : Promise.resolve("OK")),
  } as unknown as Redis;
  const cache = createDgeCache({ clock: createManualClock(), logger, redis }, opts);
  for (let i = 0; i < 20; i++) {
    t.is(await cache.getVerdict("acme", `k${i}`), undefined);
    await cache.setVerdict(
      "acme",
      `k${i}`,
      { allow: true, reason: "allowed", classification: "", findings: {}, policyVersion: "v1" },
      1000,
    );
  }
  t.is(cache.peekVerdict("acme", "k3")?.allow, true, "the in-process cache serves");
  down = false;
  await cache.getVerdict("acme", "other");
  await cache.getVerdict("acme", "other2");
  t.deepEqual(
    lines.map((l) => l.msg),
    ["redis read failed; using the in-process cache only", "redis answers again; the DGE cache uses it"],
  );
});
