import { randomUUID } from "node:crypto";
import type { Redis } from "ioredis";
import { LRUCache } from "lru-cache";
import type { Clock } from "../common/index.js";
import type { Logger } from "../telemetry/index.js";

/** A cached verdict: the decision and a redacted summary of the classification behind it. */
export interface CachedVerdict {
  allow: boolean;
  reason: string;
  /** "D0".."D4" or "". */
  classification: string;
  /** Finding kind -> count. */
  findings: Record<string, number>;
  policyVersion: string;
}

/** A cached policy: just what the guard keys verdicts on. */
export interface CachedPolicy {
  version: string;
  ttlMs: number;
}

/** A cache invalidation, as published on the pub/sub channel. */
export interface DgeInvalidation {
  /** Tenant, or "" for every tenant (a tier's default policy changed). */
  tenant: string;
  /** Tier ("1", "2", "3", "air-gapped") or "" for all. */
  tier: string;
  reason: string;
}

/** Policy and verdict cache: in-process LRU in front of Redis (optional). */
export interface DgeCache {
  /** The in-process copy only, without a Redis round trip: the hot path's hit needs no await. */
  peekPolicy(tenant: string, tier: string): CachedPolicy | undefined;
  /** In-process copy first, then Redis. */
  getPolicy(tenant: string, tier: string): Promise<CachedPolicy | undefined>;
  setPolicy(tenant: string, tier: string, policy: CachedPolicy): Promise<void>;
  /** The in-process copy only, without a Redis round trip. */
  peekVerdict(tenant: string, key: string): CachedVerdict | undefined;
  /** In-process copy first, then Redis. */
  getVerdict(tenant: string, key: string): Promise<CachedVerdict | undefined>;
  setVerdict(tenant: string, key: string, verdict: CachedVerdict, ttlMs: number): Promise<void>;
  /** Drops a tenant's ("": every tenant's) policies and verdicts here and, via Redis pub/sub, in every other kernel. */
  invalidate(inv: DgeInvalidation): Promise<void>;
  /** Hits / lookups since start (0 before the first lookup). */
  hitRate(): number;
  close(): Promise<void>;
}

/** Options of the DGE cache. */
export interface DgeCacheOptions {
  /** Longest a policy or verdict is cached, ms (the 5 minutes). @default 300000 */
  ttlMs: number;
  /** In-process entries. @default 10000 */
  maxEntries: number;
  /** Redis key prefix. @default "nops:dge:" */
  keyPrefix: string;
  /** Redis pub/sub channel for invalidations. @default "nops:dge:invalidate" */
  channel: string;
}

/** Default cache TTL: 5 minutes. */
export const DEFAULT_DGE_CACHE_TTL_MS = 300_000;
/** Default in-process capacity. */
export const DEFAULT_DGE_CACHE_MAX_ENTRIES = 10_000;
/** Default Redis key prefix. */
export const DEFAULT_DGE_CACHE_KEY_PREFIX = "nops:dge:";
/** Default invalidation channel. */
export const DEFAULT_DGE_CACHE_CHANNEL = "nops:dge:invalidate";

/** What the cache needs. */
export interface DgeCacheDeps {
  clock: Clock;
  logger: Logger;
  /** Shared Redis; without it the cache is in-process only. */
  redis?: Redis;
  /** A second connection in subscriber mode (ioredis cannot subscribe and command on one). */
  subscriber?: Redis;
  /** Called for every invalidation applied here, local or received ("local" | "pubsub"). */
  onInvalidated?: (inv: DgeInvalidation, origin: "local" | "pubsub") => void;
}

type Entry = { kind: "policy"; value: CachedPolicy } | { kind: "verdict"; value: CachedVerdict };

/** Creates the cache; Redis errors degrade to in-process only (logged, never thrown). */
export function createDgeCache(deps: DgeCacheDeps, options: DgeCacheOptions): DgeCache {
  const log = deps.logger;
  const lru = new LRUCache<string, Entry>({
    max: options.maxEntries,
    ttl: options.ttlMs,
    ttlResolution: 0,
    perf: { now: () => deps.clock.now() },
  });
  let hits = 0;
  let lookups = 0;
  const policyKey = (tenant: string, tier: string): string => `policy:${tenant}:${tier}`;
  const verdictKey = (tenant: string, key: string): string => `verdict:${tenant}:${key}`;
  const { redis, subscriber } = deps;
  // Tags our own publications so the subscriber does not apply (and report) them twice.
  const instance = randomUUID();

  // One line per outage, not one per lookup: a warning per guarded call would flood the log
  // (and cost the event loop) for as long as Redis is down or hung.
  let redisFailing = false;
  const redisFailed = (err: unknown, what: "read" | "write"): void => {
    if (!redisFailing) log.warn({ err }, `redis ${what} failed; using the in-process cache only`);
    redisFailing = true;
  };
  const redisWorked = (): void => {
    if (redisFailing) log.info("redis answers again; the DGE cache uses it");
    redisFailing = false;
  };
  async function redisGet(key: string): Promise<Entry | undefined> {
    if (!redis) return undefined;
    try {
      const raw = await redis.get(options.keyPrefix + key);
      redisWorked();
      return raw ? (JSON.parse(raw) as Entry) : undefined;
    } catch (err) {
      redisFailed(err, "read");
      return undefined;
    }
  }
  async function redisSet(key: string, entry: Entry, ttlMs: number): Promise<void> {
    if (!redis) return;
    try {
      await redis.set(options.keyPrefix + key, JSON.stringify(entry), "PX", ttlMs);
      redisWorked();
    } catch (err) {
      redisFailed(err, "write");
    }
  }
  function local(key: string): Entry | undefined {
    const e = lru.get(key);
    if (e) {
      lookups++;
      hits++;
    }
    return e;
  }
  async function lookup(key: string): Promise<Entry | undefined> {
    const known = local(key);
    if (known) return known;
    lookups++;
    const e = await redisGet(key);
    if (e) {
      lru.set(key, e);
      hits++;
    }
    return e;
  }
  const policyOf = (e: Entry | undefined): CachedPolicy | undefined => (e?.kind === "policy" ? e.value : undefined);
  const verdictOf = (e: Entry | undefined): CachedVerdict | undefined => (e?.kind === "verdict" ? e.value : undefined);
  function applyLocal(inv: DgeInvalidation): void {
    // What an invalidation drops, worked out once: a tenant's policies (at one tier, or all) and
    // verdicts, or ("" tenant) every tenant's, at the tier when one is named.
    const { tenant, tier } = inv;
    const policies = tenant === "" ? "policy:" : tier ? policyKey(tenant, tier) : `policy:${tenant}:`;
    const tierSuffix = tenant === "" && tier ? `:${tier}` : "";
    const verdicts = tenant === "" ? "verdict:" : verdictKey(tenant, "");
    for (const k of [...lru.keys()]) {
      if (k.startsWith(verdicts) || (k.startsWith(policies) && k.endsWith(tierSuffix))) lru.delete(k);
    }
  }
  // Every tenant's policy keys in Redis (at one tier, or all): the tenants are not known here.
  async function redisPolicyKeys(tier: string): Promise<string[]> {
    const keys: string[] = [];
    for await (const batch of redis!.scanStream({ match: `${options.keyPrefix}policy:*:${tier || "*"}`, count: 500 }))
      keys.push(...(batch as string[]));
    return keys;
  }

  if (subscriber) {
    subscriber.on("message", (channel: string, message: string) => {
      if (channel !== options.channel) return;
      try {
        const { from, ...inv } = JSON.parse(message) as DgeInvalidation & { from?: string };
        if (from === instance || typeof inv.tenant !== "string" || typeof inv.tier !== "string") return;
        applyLocal(inv);
        deps.onInvalidated?.(inv, "pubsub");
      } catch (err) {
        log.warn({ err }, "ignored a malformed cache invalidation message");
      }
    });
    subscriber
      .subscribe(options.channel)
      .catch((err: unknown) => log.warn({ err }, "cache invalidation subscription failed"));
  }

  return {
    peekPolicy: (tenant, tier) => policyOf(local(policyKey(tenant, tier))),
    getPolicy: async (tenant, tier) => policyOf(await lookup(policyKey(tenant, tier))),
    async setPolicy(tenant, tier, policy) {
      const ttl = Math.min(policy.ttlMs, options.ttlMs);
      const entry: Entry = { kind: "policy", value: policy };
      lru.set(policyKey(tenant, tier), entry, { ttl });
      await redisSet(policyKey(tenant, tier), entry, ttl);
    },
    peekVerdict: (tenant, key) => verdictOf(local(verdictKey(tenant, key))),
    getVerdict: async (tenant, key) => verdictOf(await lookup(verdictKey(tenant, key))),
    async setVerdict(tenant, key, verdict, ttlMs) {
      const ttl = Math.min(ttlMs, options.ttlMs);
      const entry: Entry = { kind: "verdict", value: verdict };
      lru.set(verdictKey(tenant, key), entry, { ttl });
      await redisSet(verdictKey(tenant, key), entry, ttl);
    },
    async invalidate(inv) {
      applyLocal(inv);
      deps.onInvalidated?.(inv, "local");
      if (!redis) return;
      try {
        // Policies are deleted from Redis; verdicts are keyed by policy version, so a changed
        // policy cannot reuse them, and an unchanged one may.
        const tiers = inv.tier ? [inv.tier] : ["1", "2", "3", "air-gapped"];
        const keys =
          inv.tenant === ""
            ? await redisPolicyKeys(inv.tier)
            : tiers.map((t) => options.keyPrefix + policyKey(inv.tenant, t));
        if (keys.length > 0) await redis.del(...keys);
        await redis.publish(options.channel, JSON.stringify({ ...inv, from: instance }));
      } catch (err) {
        log.warn({ err }, "redis invalidation failed; other kernels keep their copy until it expires");
      }
    },
    hitRate: () => (lookups === 0 ? 0 : hits / lookups),
    async close() {
      if (subscriber) await subscriber.unsubscribe(options.channel).catch(() => undefined);
    },
  };
}
