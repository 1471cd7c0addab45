import type { Redis } from "ioredis";
import { RateLimiterMemory, RateLimiterRedis, RateLimiterRes, type RateLimiterAbstract } from "rate-limiter-flexible";
import type { Logger } from "../telemetry/index.js";
import type { RateLimitOptions, TenantTier } from "./rate-limit-options.js";

/** The state of one limit after a request was counted. */
export interface LimitState {
  /** "ip" or "tenant". */
  scope: "ip" | "tenant";
  /** The IP or tenant the limit applies to. */
  key: string;
  limit: number;
  /** Requests counted in the current window, this one included. */
  used: number;
  remaining: number;
  /** Time until the window resets, ms. */
  msBeforeReset: number;
  windowMs: number;
  /** The tenant's tier (tenant scope only). */
  tier?: TenantTier;
  allowed: boolean;
}

/** What the limiter decided for one request. */
export interface RateLimitDecision {
  allowed: boolean;
  /** The limit to report: the one that rejected, else the one with the least headroom. */
  binding: LimitState;
  /** The client address's limit; absent for authenticated callers (their tenant's tier limits them). */
  ip?: LimitState;
  /** The tenant's limit; absent without a tenant or when the IP limit already rejected. */
  tenant?: LimitState;
  /** The tenant's tier, whenever the request named a tenant. */
  tier?: TenantTier;
}

/** Counts requests per client IP and per tenant. */
export interface RateLimiter {
  /** `ip` undefined: an authenticated caller, limited by its tenant's tier only. */
  check(ip: string | undefined, tenant: string | undefined): Promise<RateLimitDecision>;
  /** The tier configured for a tenant. */
  tierOf(tenant: string): TenantTier;
}

/** Dependencies of the limiter. */
export interface RateLimiterDeps {
  /**
   * Shared counters. Create the client with `enableOfflineQueue: false` (and a commandTimeout)
   * so that a dead Redis fails fast into the in-memory insurance limiter instead of queueing.
   * Without Redis, limits are per process.
   */
  redis?: Redis;
  logger: Logger;
}

/** Creates the limiter: rate-limiter-flexible on Redis (atomic), each with an in-memory insurance limiter. */
export function createRateLimiter(deps: RateLimiterDeps, options: RateLimitOptions): RateLimiter {
  const limiters = new Map<string, RateLimiterAbstract>();
  const limiterFor = (scope: string, points: number, windowMs: number): RateLimiterAbstract => {
    const id = `${scope}:${points}:${windowMs}`;
    let l = limiters.get(id);
    if (!l) {
      const duration = windowMs / 1000;
      const keyPrefix = `${options.keyPrefix}:${scope}:${points}`;
      // The insurance limiter takes over while Redis is down: limits stay enforced, per process.
      const memory = new RateLimiterMemory({ points, duration, keyPrefix });
      l = deps.redis
        ? new RateLimiterRedis({
            storeClient: deps.redis,
            points,
            duration,
            keyPrefix,
            insuranceLimiter: memory,
            rejectIfRedisNotReady: true,
          })
        : memory;
      limiters.set(id, l);
    }
    return l;
  };
  const tierOf = (tenant: string): TenantTier => options.tenantTiers[tenant] ?? options.defaultTier;

  async function count(
    limiter: RateLimiterAbstract,
    key: string,
    limit: number,
    windowMs: number,
  ): Promise<Omit<LimitState, "scope" | "key" | "tier">> {
    let res: RateLimiterRes;
    let allowed = true;
    try {
      res = await limiter.consume(key);
    } catch (e) {
      if (!(e instanceof RateLimiterRes)) throw e;
      res = e;
      allowed = false;
    }
    return {
      limit,
      used: res.consumedPoints,
      remaining: Math.max(0, res.remainingPoints),
      msBeforeReset: Math.max(0, res.msBeforeNext),
      windowMs,
      allowed,
    };
  }

  return {
    tierOf,
    async check(ip, tenant) {
      let ipState: LimitState | undefined;
      if (ip !== undefined) {
        const ipLimit = options.ipOverrides[ip] ?? options.ipLimit;
        ipState = {
          scope: "ip",
          key: ip,
          ...(await count(limiterFor("ip", ipLimit, options.ipWindowMs), ip, ipLimit, options.ipWindowMs)),
        };
      }
      let tenantState: LimitState | undefined;
      // An IP over its limit does not get to spend its tenant's quota.
      if (tenant !== undefined && (ipState?.allowed ?? true)) {
        const tier = tierOf(tenant);
        const limit = options.tierLimits[tier];
        tenantState = {
          scope: "tenant",
          key: tenant,
          tier,
          ...(await count(limiterFor("tenant", limit, options.tenantWindowMs), tenant, limit, options.tenantWindowMs)),
        };
      }
      const states = [ipState, tenantState].filter((x): x is LimitState => x !== undefined);
      const rejected = states.find((s) => !s.allowed);
      const binding =
        rejected ?? states.reduce((a, b) => (b.remaining / b.limit < a.remaining / a.limit ? b : a), states[0]!);
      return {
        allowed: !rejected,
        binding,
        ip: ipState,
        tenant: tenantState,
        tier: tenant === undefined ? undefined : tierOf(tenant),
      };
    },
  };
}
