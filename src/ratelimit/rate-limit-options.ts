import { ConfigError } from "../common/errors.js";

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
  /** Fraction of a tenant's quota above which billing.rate_limit_exceeded.v1 is emitted (once per window). @default 0.95 */
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

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === "object" && v !== null && !Array.isArray(v);
const isLimit = (v: unknown): v is number => Number.isInteger(v) && (v as number) >= 1;
const isTier = (v: unknown): v is TenantTier => v === 1 || v === 2 || v === 3;
const isWindow = (v: unknown): v is number => Number.isInteger(v) && (v as number) >= 1000 && (v as number) % 1000 === 0;

/** Fills defaults and validates; throws ConfigError naming the bad field. */
export function resolveRateLimitOptions(input: unknown = {}, path = "rateLimit"): RateLimitOptions {
  if (!isObject(input)) throw new ConfigError(`${path} must be an object`);
  const known = ["ipLimit", "ipWindowMs", "ipOverrides", "tierLimits", "tenantWindowMs", "tenantTiers", "defaultTier", "alertThreshold", "keyPrefix"];
  for (const k of Object.keys(input)) if (!known.includes(k)) throw new ConfigError(`${path}.${k} is not a known option`);
  const o: RateLimitOptions = {
    ipLimit: DEFAULT_IP_LIMIT,
    ipWindowMs: DEFAULT_IP_WINDOW_MS,
    ipOverrides: {},
    tierLimits: { ...DEFAULT_TIER_LIMITS },
    tenantWindowMs: DEFAULT_TENANT_WINDOW_MS,
    tenantTiers: {},
    defaultTier: 1,
    alertThreshold: DEFAULT_ALERT_THRESHOLD,
    keyPrefix: DEFAULT_RATE_LIMIT_KEY_PREFIX,
  };
  if (input.ipLimit !== undefined) {
    if (!isLimit(input.ipLimit)) throw new ConfigError(`${path}.ipLimit must be an integer >= 1`);
    o.ipLimit = input.ipLimit;
  }
  for (const k of ["ipWindowMs", "tenantWindowMs"] as const) {
    if (input[k] !== undefined) {
      if (!isWindow(input[k])) throw new ConfigError(`${path}.${k} must be a whole number of seconds in ms (>= 1000)`);
      o[k] = input[k];
    }
  }
  if (input.ipOverrides !== undefined) {
    if (!isObject(input.ipOverrides)) throw new ConfigError(`${path}.ipOverrides must be a map of IP to limit`);
    for (const [ip, v] of Object.entries(input.ipOverrides)) {
      if (!isLimit(v)) throw new ConfigError(`${path}.ipOverrides.${ip} must be an integer >= 1`);
      o.ipOverrides[ip] = v;
    }
  }
  if (input.tierLimits !== undefined) {
    if (!isObject(input.tierLimits)) throw new ConfigError(`${path}.tierLimits must be a map of tier to limit`);
    for (const [tier, v] of Object.entries(input.tierLimits)) {
      const n = Number(tier);
      if (!isTier(n)) throw new ConfigError(`${path}.tierLimits.${tier} is not a tier (1, 2 or 3)`);
      if (!isLimit(v)) throw new ConfigError(`${path}.tierLimits.${tier} must be an integer >= 1`);
      o.tierLimits[n] = v;
    }
  }
  if (input.tenantTiers !== undefined) {
    if (!isObject(input.tenantTiers)) throw new ConfigError(`${path}.tenantTiers must be a map of tenant to tier`);
    for (const [tenant, v] of Object.entries(input.tenantTiers)) {
      if (!isTier(v)) throw new ConfigError(`${path}.tenantTiers.${tenant} must be 1, 2 or 3`);
      o.tenantTiers[tenant] = v;
    }
  }
  if (input.defaultTier !== undefined) {
    if (!isTier(input.defaultTier)) throw new ConfigError(`${path}.defaultTier must be 1, 2 or 3`);
    o.defaultTier = input.defaultTier;
  }
  if (input.alertThreshold !== undefined) {
    const v = input.alertThreshold;
    if (typeof v !== "number" || !(v > 0 && v <= 1)) throw new ConfigError(`${path}.alertThreshold must be a number in (0, 1]`);
    o.alertThreshold = v;
  }
  if (input.keyPrefix !== undefined) {
    if (typeof input.keyPrefix !== "string" || input.keyPrefix.length === 0) throw new ConfigError(`${path}.keyPrefix must be a non-empty string`);
    o.keyPrefix = input.keyPrefix;
  }
  return o;
}
