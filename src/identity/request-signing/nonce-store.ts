import type { Redis } from "ioredis";
import { type Clock, KernelError } from "../../common/index.js";
import type { Logger } from "../../telemetry/index.js";

/** The in-memory nonce store is full of unexpired nonces; refusing is safer than forgetting. */
export class NonceStoreFullError extends KernelError {
  override name = "NonceStoreFullError";
}

/** Remembers nonces so a signed request cannot be replayed. */
export interface NonceStore {
  /** True when the nonce was new (now claimed for ttlMs); false when it was seen before. */
  claim(key: string, ttlMs: number): Promise<boolean>;
}

/** Dependencies of the nonce store. */
export interface NonceStoreDeps {
  /** Shared store (create it with `enableOfflineQueue: false` so an outage fails fast). */
  redis?: Redis;
  clock: Clock;
  logger: Logger;
}

/** Options of the nonce store. */
export interface NonceStoreOptions {
  /** Redis key prefix. @default "nops:nonce" */
  keyPrefix: string;
  /** Most unexpired nonces kept in memory. @default 1000000 */
  maxMemoryEntries: number;
}

/** Default nonce store options. */
export const DEFAULT_NONCE_STORE_OPTIONS: NonceStoreOptions = { keyPrefix: "nops:nonce", maxMemoryEntries: 1_000_000 };

/**
 * Creates the store: every nonce is claimed in process memory and, when Redis is configured,
 * with SET NX PX in Redis so other kernel instances see it too. When Redis errors, memory alone
 * decides (replays against this instance are still caught) and the outage is logged.
 */
export function createNonceStore(
  deps: NonceStoreDeps,
  options: NonceStoreOptions = DEFAULT_NONCE_STORE_OPTIONS,
): NonceStore {
  const seen = new Map<string, number>();
  let redisDown = false;
  let inserts = 0;
  const purge = (now: number): void => {
    for (const [k, exp] of seen) if (exp <= now) seen.delete(k);
  };
  return {
    async claim(key, ttlMs) {
      const now = deps.clock.now();
      const exp = seen.get(key);
      if (exp !== undefined && exp > now) return false;
      if (++inserts % 10_000 === 0) purge(now);
      if (seen.size >= options.maxMemoryEntries) {
        purge(now);
        if (seen.size >= options.maxMemoryEntries) throw new NonceStoreFullError("in-memory nonce store is full");
      }
      seen.set(key, now + ttlMs);
      if (!deps.redis) return true;
      try {
        const res = await deps.redis.set(`${options.keyPrefix}:${key}`, "1", "PX", ttlMs, "NX");
        if (redisDown) deps.logger.info("nonce store: Redis is back");
        redisDown = false;
        return res === "OK";
      } catch (e) {
        if (!redisDown) deps.logger.warn({ err: e }, "nonce store: Redis unavailable, checking nonces in memory only");
        redisDown = true;
        return true;
      }
    },
  };
}
