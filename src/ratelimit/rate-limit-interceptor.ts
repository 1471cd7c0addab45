import { create } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { type HandlerContext } from "@connectrpc/connect";
import type { Meter } from "@opentelemetry/api";
import type { Redis } from "ioredis";
import { RateLimitExceededSchema } from "../../gen/nops/events/v1/billing_events_pb.js";
import type { AuditLog } from "../audit/index.js";
import { isAllTenants, kPrincipal } from "../identity/index.js";
import { type Clock, TENANT_PATTERN, resourceExhausted } from "../common/index.js";
import {
  clientIp,
  kCorrelationId,
  kPeer,
  methodPath,
  type CallHandler,
  type CallRequest,
  type CallResult,
  type KernelInterceptor,
} from "../server/index.js";
import type { EventSink } from "../store/index.js";
import { createTally, type Logger } from "../telemetry/index.js";
import type { RateLimitOptions } from "./rate-limit-options.js";
import { createRateLimiter, type LimitState, type RateLimitDecision } from "./rate-limiter.js";

/** Dependencies of the rate-limit interceptor. */
export interface RateLimitInterceptorDeps {
  /** See RateLimiterDeps.redis: create it with `enableOfflineQueue: false`. */
  redis?: Redis;
  events: EventSink;
  audit: AuditLog;
  clock: Clock;
  logger: Logger;
  meter: Meter;
  /** Who the caller is, for the audit trail (the authn step runs before). @default () => "anonymous" */
  actorOf?: (ctx: HandlerContext) => string;
}

/** The billing event type emitted when a tenant nears its quota. */
export const RATE_LIMIT_EXCEEDED_EVENT = "billing.rate_limit_exceeded.v1";

// A tenant named in a request, when it is a well-formed tenant id (never written to the outbox otherwise).
function tenantOf(input: unknown): string | undefined {
  if (typeof input !== "object" || input === null || Symbol.asyncIterator in input) return undefined;
  const t = (input as { tenant?: unknown }).tenant;
  return typeof t === "string" && TENANT_PATTERN.test(t) ? t : undefined;
}

/**
 * The X-RateLimit-* headers of a decision: limit, remaining and reset of the binding limit (reset
 * is the Unix epoch second at which the window resets, as GitHub's and the roadmap's API define it;
 * Retry-After carries the delta); tier is the tenant's tier, or "ip" for tenant-less requests.
 */
export function rateLimitHeaders(d: RateLimitDecision, nowMs: number): Record<string, string> {
  const b = d.binding;
  return {
    "x-ratelimit-limit": String(b.limit),
    "x-ratelimit-remaining": String(b.remaining),
    "x-ratelimit-reset": String(Math.ceil((nowMs + b.msBeforeReset) / 1000)),
    "x-ratelimit-tier": d.tier === undefined ? "ip" : String(d.tier),
  };
}

/**
 * Creates the rate-limit link of the interceptor chain: per client IP and per tenant tier.
 * Every response carries X-RateLimit-Limit/Remaining/Reset/Tier (response headers for Connect,
 * initial metadata for gRPC); over the limit answers RESOURCE_EXHAUSTED (HTTP 429) with
 * Retry-After.
 */
export function createRateLimitInterceptor(
  deps: RateLimitInterceptorDeps,
  options: RateLimitOptions,
): KernelInterceptor {
  const log = deps.logger;
  const limiter = createRateLimiter({ redis: deps.redis, logger: log }, options);
  const actorOf = deps.actorOf ?? (() => "anonymous");
  const decisions = createTally(deps.meter, "nops_ratelimit_decisions_total", {
    labels: ["scope", "outcome"],
    description: "Rate-limit decisions by scope and outcome",
  });
  // When the current window of a key ends: one billing event per tenant per window, and one audit
  // row per rejected key per window (auditing every rejected request would let a flood turn
  // into one fsync per request; the row carries the count of the previous window's rejections).
  const alerted = new Map<string, number>();
  const audited = new Map<string, { until: number; suppressed: number }>();
  const prune = (m: Map<string, number> | Map<string, { until: number }>, now: number): void => {
    if (m.size < 10_000) return;
    for (const [k, v] of m) if ((typeof v === "number" ? v : v.until) <= now) m.delete(k);
  };

  function alertIfNearQuota(t: LimitState, correlationId: string): void {
    const now = deps.clock.now();
    if (t.used <= options.alertThreshold * t.limit || (alerted.get(t.key) ?? 0) > now) return;
    alerted.set(t.key, now + t.msBeforeReset);
    prune(alerted, now);
    try {
      deps.events.append({
        type: RATE_LIMIT_EXCEEDED_EVENT,
        tenant: t.key,
        schema: RateLimitExceededSchema,
        payload: create(RateLimitExceededSchema, {
          tenant: t.key,
          tier: t.tier ?? 0,
          limit: t.limit,
          used: t.used,
          windowMs: t.windowMs,
          windowResetAt: timestampFromMs(now + t.msBeforeReset),
          threshold: options.alertThreshold,
          rejected: !t.allowed,
        }),
        correlationId,
      });
    } catch (e) {
      log.error({ err: e, tenant: t.key }, "could not record billing.rate_limit_exceeded.v1");
    }
  }

  function auditRejection(
    ctx: HandlerContext,
    d: RateLimitDecision,
    ip: string,
    path: string,
    correlationId: string,
  ): void {
    const b = d.binding;
    const key = `${b.scope}:${b.key}`;
    const now = deps.clock.now();
    const seen = audited.get(key);
    if (seen && seen.until > now) {
      seen.suppressed++;
      return;
    }
    audited.set(key, { until: now + b.msBeforeReset, suppressed: 0 });
    prune(audited, now);
    try {
      deps.audit.append({
        actor: actorOf(ctx),
        action: "ratelimit.reject",
        tenant: d.tenant?.key ?? "",
        resource: b.scope === "tenant" ? `tenant/${b.key}` : `ip/${b.key}`,
        outcome: "denied",
        details: {
          scope: b.scope,
          ip,
          method: path,
          limit: b.limit,
          windowMs: b.windowMs,
          tier: b.tier ?? null,
          previousWindowRejections: seen?.suppressed ?? 0,
        },
        correlationId,
      });
    } catch (e) {
      log.error({ err: e }, "could not audit a rate-limit rejection");
    }
  }

  /** Counts the call, sets the headers of the decision, then passes the call on or refuses it. */
  async function limited(
    next: CallHandler,
    call: CallRequest,
    ip: string | undefined,
    tenant: string | undefined,
  ): Promise<CallResult> {
    const decision = await limiter.check(ip, tenant);
    const { ctx } = call;
    const correlationId = ctx.values.get(kCorrelationId);
    const headers = rateLimitHeaders(decision, deps.clock.now());
    for (const name in headers) ctx.responseHeader.set(name, headers[name]!);
    if (decision.tenant) alertIfNearQuota(decision.tenant, correlationId);
    decisions.add(1, decision.binding.scope, decision.allowed ? "allowed" : "rejected");
    if (decision.allowed) return next(call);
    const retryAfter = String(Math.max(1, Math.ceil(decision.binding.msBeforeReset / 1000)));
    ctx.responseHeader.set("retry-after", retryAfter);
    auditRejection(ctx, decision, clientIp(ctx.values.get(kPeer).address), methodPath(call.method), correlationId);
    throw resourceExhausted(
      decision.binding.scope === "tenant" ? "tenant rate limit exceeded" : "client rate limit exceeded",
      decision.binding.msBeforeReset,
      headers,
    );
  }

  return (next) => (call) => {
    const { ctx } = call;
    // Callers acting for a tenant are limited by its tier, never by address: every agent on one
    // host shares its address. The tenant is the principal's own, never the request's field
    // (authz has not checked it yet): naming another tenant must not spend its quota or raise
    // billing events for it. Only a principal of every tenant (SUPER_ADMIN) acts for the tenant it
    // names. Callers without a principal (anonymous ports, public methods) are limited by address.
    const principal = ctx.values.get(kPrincipal);
    const tenant = principal?.tenant ?? (principal && isAllTenants(principal) ? tenantOf(call.input) : undefined);
    // A call that is nobody's tenant's (anonymous, or an admin call naming none) counts against its address.
    const ip = tenant === undefined ? clientIp(ctx.values.get(kPeer).address) : undefined;
    return limited(next, call, ip, tenant);
  };
}
