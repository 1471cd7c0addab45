/**
 * The rate limits a bench's kernel runs with: the load comes from one loopback address and one tenant
 * ("bench"), so the per-IP and per-tier limits are lifted for them. The limiter still counts every call,
 * as in production.
 */
export const LIFTED_RATE_LIMITS = {
  ipOverrides: { "127.0.0.1": 1_000_000_000 },
  tenantTiers: { bench: 3 },
  tierLimits: { 3: 1_000_000_000 },
};
