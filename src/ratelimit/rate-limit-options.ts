import { ConfigError, readInt, readNumber, readObject, readSection, readString } from "../common/index.js";

/** A tenant tier: 1, 2 or 3. */
export type TenantTier = 1 | 2 | 3;

/** Options of the rate limiter (config section `rateLimit`). */
export interface RateLimitOptions {
  /** Requests per client IP per `ipWindowMs`. @default 100 */
  ipLimit: number;
  /** Window of the per-IP limit, ms (whole seconds). @default 60000 */
  ipWindowMs: number;
  /** Per-IP limits that replace ipLimit, keyed by IP address. @default {} */
  ipOverrides: Record<string, number>;
  /** Requests per second per tier. @default { 1: 100, 2: 500, 3: 5000 } */
  tierLimits: Record<TenantTier, number>;
  /** Window of the tenant limits, ms (whole seconds). @default 1000 */
  tenantWindowMs: number;
  /** Each tenant's tier; tenants not listed get defaultTier. @default {} */
  tenantTiers: Record<string, TenantTier>;
  /** @default 1 */
  defaultTier: TenantTier;
  /**
   * Fraction of a tenant's quota above which billing.rate_limit_exceeded.v1 is emitted (once per window).
   * @default 0.95
   */
  alertThreshold: number;
  /** Prefix of the Redis keys. @default "nops:rl" */
  keyPrefix: string;
}

/** Default per-IP limit: 100 requests a minute. */
export const DEFAULT_IP_LIMIT = 100;
/** Default per-IP window. */
export const DEFAULT_IP_WINDOW_MS = 60_000;
/** Default requests per second of tiers 1, 2 and 3. */
export const DEFAULT_TIER_LIMITS: Record<TenantTier, number> = { 1: 100, 2: 500, 3: 5_000 };
/** Default tenant window: one second (the tier limits are per second). */
export const DEFAULT_TENANT_WINDOW_MS = 1_000;
/** Default billing alert threshold. */
export const DEFAULT_ALERT_THRESHOLD = 0.95;
/** Default Redis key prefix. */
export const DEFAULT_RATE_LIMIT_KEY_PREFIX = "nops:rl";

/** Every default, also the set of known keys. */
export const DEFAULT_RATE_LIMIT_OPTIONS: Readonly<RateLimitOptions> = {
  ipLimit: DEFAULT_IP_LIMIT,
  ipWindowMs: DEFAULT_IP_WINDOW_MS,
  ipOverrides: {},
  tierLimits: DEFAULT_TIER_LIMITS,
  tenantWindowMs: DEFAULT_TENANT_WINDOW_MS,
  tenantTiers: {},
  defaultTier: 1,
  alertThreshold: DEFAULT_ALERT_THRESHOLD,
  keyPrefix: DEFAULT_RATE_LIMIT_KEY_PREFIX,
};

/** Fills defaults and validates; throws ConfigError naming the bad field. */
export function resolveRateLimitOptions(input: unknown = {}, path = "rateLimit"): RateLimitOptions {
  const s = readSection(input, path, DEFAULT_RATE_LIMIT_OPTIONS);
  const d = DEFAULT_RATE_LIMIT_OPTIONS;
  // The limiter counts in whole-second buckets.
  const window = (key: "ipWindowMs" | "tenantWindowMs"): number => {
    const v = readInt(s, key, path, d[key], 1000);
    if (v % 1000 !== 0) throw new ConfigError(`${path}.${key} must be a whole number of seconds in ms (>= 1000)`);
    return v;
  };
  const ipLimit = readInt(s, "ipLimit", path, d.ipLimit, 1);
  const defaultTier = readInt(s, "defaultTier", path, d.defaultTier, 1, 3) as TenantTier;
  // Map entries fall back to what an absent entry means, so only present values are checked.
  const ipOverrides: Record<string, number> = {};
  const ips = readObject(s.ipOverrides, `${path}.ipOverrides`);
  for (const ip of Object.keys(ips)) ipOverrides[ip] = readInt(ips, ip, `${path}.ipOverrides`, ipLimit, 1);
  const tierLimits = { ...d.tierLimits };
  const tiers = readObject(s.tierLimits, `${path}.tierLimits`);
  for (const tier of Object.keys(tiers)) {
    const n = Number(tier);
    if (n !== 1 && n !== 2 && n !== 3) throw new ConfigError(`${path}.tierLimits.${tier} is not a tier (1, 2 or 3)`);
    tierLimits[n] = readInt(tiers, tier, `${path}.tierLimits`, tierLimits[n], 1);
  }
  const tenantTiers: Record<string, TenantTier> = {};
  const tenants = readObject(s.tenantTiers, `${path}.tenantTiers`);
  for (const tenant of Object.keys(tenants))
    tenantTiers[tenant] = readInt(tenants, tenant, `${path}.tenantTiers`, defaultTier, 1, 3) as TenantTier;
  return {
    ipLimit,
    ipWindowMs: window("ipWindowMs"),
    ipOverrides,
    tierLimits,
    tenantWindowMs: window("tenantWindowMs"),
    tenantTiers,
    defaultTier,
    alertThreshold: readNumber(s, "alertThreshold", path, d.alertThreshold, 0, 1, { exclusiveMin: true }),
    keyPrefix: readString(s, "keyPrefix", path, d.keyPrefix, { nonEmpty: true }),
  };
}
