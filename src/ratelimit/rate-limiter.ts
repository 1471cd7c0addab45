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
  // One limiter per scope and limit (each scope has one window): found by two lookups, no key built per call.
  const limiters = { ip: new Map<number, RateLimiterAbstract>(), tenant: new Map<number, RateLimiterAbstract>() };
  const limiterFor = (scope: LimitState["scope"], points: number, windowMs: number): RateLimiterAbstract => {
    let l = limiters[scope].get(points);
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
      limiters[scope].set(points, l);
    }
    return l;
  };
  const tierOf = (tenant: string): TenantTier => options.tenantTiers[tenant] ?? options.defaultTier;

  /** Counts one request against one limit (rate-limiter-flexible rejects with the state when over it). */
  async function count(
    scope: LimitState["scope"],
    key: string,
    limit: number,
    windowMs: number,
    tier?: TenantTier,
  ): Promise<LimitState> {
    let res: RateLimiterRes;
    let allowed = true;
    try {
      res = await limiterFor(scope, limit, windowMs).consume(key);
    } catch (e) {
      if (!(e instanceof RateLimiterRes)) throw e;
      res = e;
      allowed = false;
    }
    const state: LimitState = {
      scope,
      key,
      limit,
      used: res.consumedPoints,
      remaining: Math.max(0, res.remainingPoints),
      msBeforeReset: Math.max(0, res.msBeforeNext),
      windowMs,
      allowed,
    };
    if (tier !== undefined) state.tier = tier;
    return state;
  }

  const countIp = (ip: string) => count("ip", ip, options.ipOverrides[ip] ?? options.ipLimit, options.ipWindowMs);
  const countTenant = (tenant: string) => {
    const tier = tierOf(tenant);
    return count("tenant", tenant, options.tierLimits[tier], options.tenantWindowMs, tier);
  };

  /** The address's limit, then the tenant's: the one to report is the one that rejected, else the tighter. */
  async function both(ip: string, tenant: string): Promise<RateLimitDecision> {
    const ipState = await countIp(ip);
    // An IP over its limit does not get to spend its tenant's quota.
    if (!ipState.allowed) return { allowed: false, binding: ipState, ip: ipState, tier: tierOf(tenant) };
    const tenantState = await countTenant(tenant);
    const binding =
      !tenantState.allowed || tenantState.remaining / tenantState.limit < ipState.remaining / ipState.limit
        ? tenantState
        : ipState;
    return { allowed: binding.allowed, binding, ip: ipState, tenant: tenantState, tier: tenantState.tier };
  }

  // One limit applies to almost every call: the caller's tenant's, else its address's.
  async function byAddress(ip: string): Promise<RateLimitDecision> {
    const state = await countIp(ip);
    return { allowed: state.allowed, binding: state, ip: state };
  }

  async function byTenant(tenant: string): Promise<RateLimitDecision> {
    const state = await countTenant(tenant);
    return { allowed: state.allowed, binding: state, tenant: state, tier: state.tier };
  }

  return {
    tierOf,
    check(ip, tenant) {
      if (ip !== undefined && tenant !== undefined) return both(ip, tenant);
      if (ip !== undefined) return byAddress(ip);
      if (tenant !== undefined) return byTenant(tenant);
      return Promise.reject(new Error("a rate-limit check needs a client address or a tenant"));
    },
  };
}
