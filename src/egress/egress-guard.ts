import { hash } from "node:crypto";
import { performance } from "node:perf_hooks";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, type Client } from "@connectrpc/connect";
import type { Attributes, Meter } from "@opentelemetry/api";
import type { Redis } from "ioredis";
import type { AuditLog } from "../audit/index.js";
import {
  type Clock,
  ConfigError,
  readBool,
  readInt,
  readSection,
  type RawSection,
  permissionDenied,
  TENANT_PATTERN,
} from "../common/index.js";
import type { Db, EventSink } from "../store/index.js";
import { createTally, type Logger } from "../telemetry/index.js";
import { Verdict, type Classification, type DataGovernanceService } from "../../gen/nops/dge/v1/dge_pb.js";
import {
  DgePolicyCacheInvalidatedSchema,
  EgressAllowedSchema,
  EgressBlockedSchema,
  EgressDecisionSchema,
  EgressOverrideActivatedSchema,
  type EgressDecision as EgressDecisionEvent,
} from "../../gen/nops/events/v1/egress_events_pb.js";
import { egressClassName, piiKindOf, tierOf, type TierName, DGE_ANSWER_CODES } from "./dge-contract.js";
import { DgeSignatureError } from "./dge-signature-verifier.js";
import {
  createDgeCache,
  DEFAULT_DGE_CACHE_CHANNEL,
  DEFAULT_DGE_CACHE_KEY_PREFIX,
  DEFAULT_DGE_CACHE_MAX_ENTRIES,
  DEFAULT_DGE_CACHE_TTL_MS,
  type CachedVerdict,
  type DgeCache,
} from "./dge-cache.js";
import { createOverrideVerifier, createSqliteUsedGrants, grantCovers, type OverrideCheck } from "./override-grant.js";
import { payloadText } from "./payload-text.js";
import { headersText } from "./outbound-headers.js";

/** Options of the Egress Guard. */
export interface EgressGuardOptions {
  /** DGE_ENABLED: when false every call is allowed with a warning (no fail-closed). @default true */
  dgeEnabled: boolean;
  /**
   * No DGE answer within this many ms denies the call with reason dge_timeout (refused connections are
   * retried until then; each attempt is bounded by admin.dependencies.dge.budgetMs as well). @default 5000
   */
  dgeTimeoutMs: number;
  /** Tier of each tenant. @default {} */
  tenantTiers: Record<string, TierName>;
  /** Tier of tenants not listed. @default 3 (the strictest regime that still lets metadata out) */
  defaultTier: TierName;
  /** Break-glass approvers: id -> HMAC key (at least 32 characters). @default {} (no override possible) */
  approvers: Record<string, string>;
  /** Distinct approver signatures a grant needs. @default 2 */
  requiredApprovals: number;
  /** Longest a policy or verdict is cached, ms. @default 300000 */
  cacheTtlMs: number;
  /** In-process cache entries. @default 10000 */
  cacheMaxEntries: number;
  /** egress.allowed.v1 events (coalesced per window) are written this often, ms (one fsync per batch). @default 1000 */
  eventFlushMs: number;
}

/** Default DGE deadline: 5 s (issue: fail closed after 5 s). */
export const DEFAULT_EGRESS_DGE_TIMEOUT_MS = 5000;
/** Default tier of unknown tenants. */
export const DEFAULT_EGRESS_TIER: TierName = 3;
/** Default approvals per break-glass grant. */
export const DEFAULT_EGRESS_REQUIRED_APPROVALS = 2;
/** Default batching interval of egress.allowed.v1 events. */
export const DEFAULT_EGRESS_EVENT_FLUSH_MS = 1000;

function readTier(v: unknown, field: string): TierName {
  if (v === 1 || v === 2 || v === 3 || v === "air-gapped") return v;
  if (v === "1" || v === "2" || v === "3") return Number(v) as TierName;
  throw new ConfigError(`${field} must be 1, 2, 3 or "air-gapped" (got ${JSON.stringify(v)})`);
}

/** Validates the egress section; throws ConfigError naming the field. */
export function resolveEgressGuardOptions(input: unknown, path = "egress.guard"): EgressGuardOptions {
  const s: RawSection = readSection(input, path, {
    dgeEnabled: 0,
    dgeTimeoutMs: 0,
    tenantTiers: 0,
    defaultTier: 0,
    approvers: 0,
    requiredApprovals: 0,
    cacheTtlMs: 0,
    cacheMaxEntries: 0,
    eventFlushMs: 0,
  });
  const tenantTiers: Record<string, TierName> = {};
  const tiersIn = s.tenantTiers ?? {};
  if (typeof tiersIn !== "object" || Array.isArray(tiersIn))
    throw new ConfigError(`${path}.tenantTiers must be an object`);
  for (const [tenant, tier] of Object.entries(tiersIn as Record<string, unknown>)) {
    if (!TENANT_PATTERN.test(tenant))
      throw new ConfigError(`${path}.tenantTiers: ${JSON.stringify(tenant)} is not a valid tenant id`);
    tenantTiers[tenant] = readTier(tier, `${path}.tenantTiers.${tenant}`);
  }
  const approversIn = s.approvers ?? {};
  if (typeof approversIn !== "object" || Array.isArray(approversIn))
    throw new ConfigError(`${path}.approvers must be an object`);
  for (const [id, key] of Object.entries(approversIn as Record<string, unknown>)) {
    if (typeof key !== "string" || key.length < 32)
      throw new ConfigError(`${path}.approvers.${id} must be a key of at least 32 characters`);
  }
  return {
    dgeEnabled: readBool(s, "dgeEnabled", path, true),
    dgeTimeoutMs: readInt(s, "dgeTimeoutMs", path, DEFAULT_EGRESS_DGE_TIMEOUT_MS, 50, 60_000),
    tenantTiers,
    defaultTier: s.defaultTier === undefined ? DEFAULT_EGRESS_TIER : readTier(s.defaultTier, `${path}.defaultTier`),
    approvers: approversIn as Record<string, string>,
    requiredApprovals: readInt(s, "requiredApprovals", path, DEFAULT_EGRESS_REQUIRED_APPROVALS, 2, 10),
    cacheTtlMs: readInt(s, "cacheTtlMs", path, DEFAULT_DGE_CACHE_TTL_MS, 1000, 3_600_000),
    cacheMaxEntries: readInt(s, "cacheMaxEntries", path, DEFAULT_DGE_CACHE_MAX_ENTRIES, 1, 10_000_000),
    eventFlushMs: readInt(s, "eventFlushMs", path, DEFAULT_EGRESS_EVENT_FLUSH_MS, 1, 60_000),
  };
}

/** One outbound call (or message) as the guard sees it. */
export interface EgressRequest {
  /** The tenant the data belongs to (from x-nops-tenant or the caller). */
  tenant: string;
  transport: "grpc" | "connect" | "http" | "nats";
  /** Where it goes: client name and method, URL origin+path, or NATS subject. */
  destination: string;
  /** What it is: message type, content type or event type. */
  dataType: string;
  /** The payload: text, bytes (JSON or protobuf) or a message object. */
  payload: unknown;
  /**
   * Everything else the call carries: headers or metadata as forwarded, plus the door's own
   * pseudo-headers for data outside the payload (`:url` of an HTTP call, `:subject` of a NATS
   * message). Classified together with the payload (see headersText for what is left out).
   */
  headers?: ReadonlyArray<readonly [string, string]> | undefined;
  /**
   * How a blocked call is described in egress.blocked.v1, its audit row and logs: built by the door
   * from what it knows without the caller's data (client name, method, origin-free label), because
   * a blocked call's destination or data type may be what held the data. Default: the transport.
   */
  record?: { destination: string; dataType: string } | undefined;
  /** The X-ENIS-Override header value, if the caller presented a break-glass grant. */
  override?: string | undefined;
  correlationId?: string | undefined;
  /** Caller's abort signal; aborting denies the call. */
  signal?: AbortSignal | undefined;
}

/** The guard's decision for one call. */
export interface EgressDecision {
  allowed: boolean;
  /** "allowed", "override", "dge_disabled", "air_gapped", "pii_blocked_tier3", "dge_timeout", ... */
  reason: string;
  tier: string;
  /** "D0".."D4", or "" when not classified. */
  classification: string;
  cached: boolean;
}

/**
 * Denial reasons that are no verdict at all: the DGE did not answer usably. A synchronous call
 * fails closed on them; a queued event is asked again later instead of being blocked for good.
 */
export const NO_VERDICT_REASONS: ReadonlySet<string> = new Set(["dge_timeout", "dge_error", "dge_signature_invalid"]);

/** The only door out: decides every outbound call and records the decision. */
export interface EgressGuard {
  check(request: EgressRequest): Promise<EgressDecision>;
  /**
   * The decision when it needs no I/O (cached verdict, air-gapped, break-glass, DGE disabled,
   * invalid tenant), recorded like check()'s; undefined when only check() can decide.
   */
  checkNow(request: EgressRequest): EgressDecision | undefined;
  /**
   * check() without a promise when none is needed: the decision at once when it needs no I/O, else
   * the promise of it. For a hot path that must not wait a microtask for a cached verdict.
   */
  decide(request: EgressRequest): EgressDecision | Promise<EgressDecision>;
  /** Drops cached policies and verdicts of a tenant ("" for every tenant) here and (via Redis) in every kernel. */
  invalidate(tenant: string, reason: string): Promise<void>;
  /** Writes pending egress.allowed.v1 events now. */
  flush(): void;
  close(): Promise<void>;
}

/** The PERMISSION_DENIED error a blocked call fails with (the reason, never the payload). */
export function egressDeniedError(decision: EgressDecision): ConnectError {
  return permissionDenied(`egress blocked: ${decision.reason}`, { "x-egress-reason": decision.reason });
}

/** What the guard needs. */
export interface EgressGuardDeps {
  clock: Clock;
  logger: Logger;
  meter: Meter;
  /** The DGE (clients/dge-client.ts); named by its contract so the guard does not depend on the clients. */
  dge: Client<typeof DataGovernanceService>;
  events: EventSink;
  audit: AuditLog;
  /** When given, an event and its audit row commit in one transaction. */
  db?: Db;
  /** Shared Redis for the policy and verdict cache; without it the cache is in-process only. */
  redis?: Redis;
  /** Subscriber connection for cache invalidations. */
  redisSubscriber?: Redis;
  /**
   * Destinations the kernel itself calls carrying no tenant's data, named by configuration (the
   * JWKS endpoint of identity.jwt.jwksUrl). A call to one of them with no tenant is allowed as
   * "kernel_destination" without asking the DGE (which judges only tenants' data) and recorded
   * like every decision; any other call with no tenant stays "invalid_tenant". @default []
   */
  kernelDestinations?: readonly string[];
  /**
   * Whether egress_guard_requests_total keeps its `tenant` label (the kernel passes
   * telemetry.metrics.tenantLabels). Off, the guard sums all tenants into one series itself.
   * @default true
   */
  tenantLabels?: boolean;
}

/** Allowed decisions waiting for the next flush that differ only in size, latency and caller. */
interface AllowedGroup {
  /** The first decision of the group. */
  decision: EgressDecisionEvent;
  correlationId: string | undefined;
  count: number;
  bytes: number;
  latencyMaxMs: number;
}

/** Blocked decisions of one window after the first (which is written at once). */
interface BlockedGroup {
  decision: EgressDecisionEvent;
  correlationId: string | undefined;
  /** Blocked decisions counted since the first row; written as one row at the window's end. */
  count: number;
  bytes: number;
}

// Attributes of the latency histogram, built once rather than per decision.
const ALLOWED_ATTRIBUTES: Attributes = Object.freeze({ result: "allowed" });
const BLOCKED_ATTRIBUTES: Attributes = Object.freeze({ result: "blocked" });

/** Cache key of a verdict: what was decided, under which policy, for which destination. */
function verdictKey(tier: string, policyVersion: string, destination: string, text: string): string {
  return hash("sha256", `${tier}\n${policyVersion}\n${destination}\n${text}`, "hex");
}

class DgeTimeoutError extends Error {
  override name = "DgeTimeoutError";
}

/** Creates the Egress Guard. */
export function createEgressGuard(deps: EgressGuardDeps, options: EgressGuardOptions): EgressGuard {
  const log = deps.logger.child({ component: "egress-guard" });
  const kernelDestinations = new Set(deps.kernelDestinations ?? []);
  const tx = (fn: () => void): void => (deps.db ? deps.db.transaction(fn)() : fn());
  const requests = createTally(deps.meter, "egress_guard_requests_total", {
    labels: ["result", "tenant", "tier"],
    description: "Egress Guard decisions by result, tenant and tier",
    // The MeterProvider's view drops the label too, but would keep one tenant's count, not the sum.
    omit: deps.tenantLabels === false ? ["tenant"] : [],
  });
  const latency = deps.meter.createHistogram("egress_guard_latency_ms", {
    description: "Time the Egress Guard took to decide",
    unit: "ms",
  });
  const dgeErrors = deps.meter.createCounter("dge_classification_errors_total", {
    description: "DGE calls that gave no usable answer",
  });
  const hitRate = deps.meter.createObservableGauge("dge_cache_hit_rate", {
    description: "Share of DGE policy and verdict lookups served from cache",
  });
  const overrides = createOverrideVerifier(
    deps.clock,
    options.approvers,
    options.requiredApprovals,
    deps.db ? createSqliteUsedGrants(deps.db) : undefined,
  );
  const cache: DgeCache = createDgeCache(
    {
      clock: deps.clock,
      logger: log,
      ...(deps.redis ? { redis: deps.redis } : {}),
      ...(deps.redisSubscriber ? { subscriber: deps.redisSubscriber } : {}),
      onInvalidated: (inv, origin) => {
        // An event belongs to a tenant; dropping every tenant's copies is audited by what changed the policy.
        if (inv.tenant === "") {
          log.info({ tier: inv.tier, reason: inv.reason, origin }, "dropped every tenant's cached DGE policies");
          return;
        }
        tx(() => {
          deps.events.append({
            type: "dge.policy.cache_invalidated.v1",
            tenant: inv.tenant,
            schema: DgePolicyCacheInvalidatedSchema,
            payload: create(DgePolicyCacheInvalidatedSchema, { ...inv, origin }),
          });
        });
      },
    },
    {
      ttlMs: options.cacheTtlMs,
      maxEntries: options.cacheMaxEntries,
      keyPrefix: DEFAULT_DGE_CACHE_KEY_PREFIX,
      channel: DEFAULT_DGE_CACHE_CHANNEL,
    },
  );
  const cb = (r: { observe(v: number): void }): void => r.observe(cache.hitRate());
  hitRate.addCallback(cb);

  // Allowed decisions of one flush window, coalesced by everything but size, latency and
  // correlation id: one egress.allowed.v1 per group instead of one per call.
  let pending = new Map<string, AllowedGroup>();
  const flush = (): void => {
    if (pending.size === 0) return;
    const batch = pending;
    pending = new Map();
    try {
      tx(() => {
        for (const g of batch.values()) {
          const payload = create(EgressAllowedSchema, {
            decision: g.decision,
            count: g.count,
            payloadBytesTotal: BigInt(g.bytes),
            latencyMsMax: g.latencyMaxMs,
          });
          deps.events.append({
            type: "egress.allowed.v1",
            tenant: g.decision.tenant,
            schema: EgressAllowedSchema,
            payload,
            ...(g.correlationId ? { correlationId: g.correlationId } : {}),
          });
        }
      });
    } catch (err) {
      log.error({ err, events: batch.size }, "could not write egress.allowed.v1 events");
    }
  };
  const timer = setInterval(() => {
    flush();
    flushBlocked();
  }, options.eventFlushMs);
  timer.unref();

  // Retries refused connections until the deadline: the DGE may be restarting; only the deadline
  // turns silence into a denial (issue: no DGE answer within 5 s -> dge_timeout).
  async function withDeadline<T>(
    deadline: number,
    signal: AbortSignal | undefined,
    fn: (opts: { timeoutMs: number; signal?: AbortSignal }) => Promise<T>,
  ): Promise<T> {
    let backoff = 25;
    for (;;) {
      const remaining = deadline - performance.now();
      if (remaining <= 0) throw new DgeTimeoutError("no DGE answer before the deadline");
      try {
        return await fn({ timeoutMs: Math.max(1, Math.ceil(remaining)), ...(signal ? { signal } : {}) });
      } catch (err) {
        const ce = ConnectError.from(err);
        if (signal?.aborted) throw err;
        if (ce.code === Code.DeadlineExceeded) throw new DgeTimeoutError("DGE deadline exceeded", { cause: err });
        if (DGE_ANSWER_CODES.has(ce.code) || findSignatureError(err)) throw err;
        await new Promise((r) => setTimeout(r, Math.min(backoff, Math.max(0, deadline - performance.now()))));
        backoff = Math.min(backoff * 2, 500);
      }
    }
  }

  async function classifyAndValidate(
    req: EgressRequest,
    tier: TierName,
    text: string,
    deadline: number,
  ): Promise<{ verdict: CachedVerdict; cached: boolean }> {
    const tierKey = String(tier);
    let policy = await cache.getPolicy(req.tenant, tierKey);
    if (!policy) {
      const res = await withDeadline(deadline, req.signal, (o) =>
        deps.dge.getPolicy({ tenant: req.tenant, tier: tierOf(tier) }, o),
      );
      policy = { version: res.policy?.version ?? "", ttlMs: (res.policy?.ttlSeconds ?? 0) * 1000 };
      await cache.setPolicy(req.tenant, tierKey, policy);
    }
    const key = verdictKey(tierKey, policy.version, req.destination, text);
    const hit = await cache.getVerdict(req.tenant, key);
    if (hit) return { verdict: hit, cached: true };
    const { classification } = await withDeadline(deadline, req.signal, (o) =>
      deps.dge.classify(
        {
          data: text,
          // The data goes in `data`; the context names the call by its description, which a DGE
          // may log (the caller's data type may be what holds the data).
          context: { tenant: req.tenant, dataType: described(req).dataType, correlationId: req.correlationId ?? "" },
        },
        o,
      ),
    );
    const c: Classification | undefined = classification;
    const findings: Record<string, number> = {};
    for (const f of c?.findings ?? []) findings[piiKindOf(f.type)] = (findings[piiKindOf(f.type)] ?? 0) + 1;
    const className = c ? egressClassName(c.egressClass) : "";
    let verdict: CachedVerdict;
    if (tier === 3 && (c?.findings.length ?? 0) > 0) {
      // Tier 3 blocks any PII whatever the DGE's policy says: decided here, no second round trip.
      verdict = {
        allow: false,
        reason: "pii_blocked_tier3",
        classification: className,
        findings,
        policyVersion: policy.version,
      };
    } else {
      const v = await withDeadline(deadline, req.signal, (o) =>
        deps.dge.validateEgress(
          {
            data: text,
            ...(c ? { classification: c } : {}),
            destination: req.destination,
            tenant: req.tenant,
            tier: tierOf(tier),
          },
          o,
        ),
      );
      verdict = {
        allow: v.verdict === Verdict.ALLOW,
        reason: v.reasonCode || (v.verdict === Verdict.ALLOW ? "allowed" : "dge_denied"),
        classification: className,
        findings,
        policyVersion: v.policyVersion || policy.version,
      };
      await cache.setVerdict(req.tenant, key, verdict, Math.min(policy.ttlMs, (v.ttlSeconds || 1) * 1000));
      return { verdict, cached: false };
    }
    await cache.setVerdict(req.tenant, key, verdict, policy.ttlMs);
    return { verdict, cached: false };
  }

  type OverrideInfo = { id: string; reason: string; declared: string; approvers: string[]; expiresAt: number };
  interface RecordExtra {
    findings?: Record<string, number>;
    policyVersion?: string;
    bytes: number;
    started: number;
    override?: OverrideInfo;
  }

  /** How a blocked call is described: the door's description, never the caller's data. */
  const described = (req: EgressRequest): { destination: string; dataType: string } =>
    req.record ?? { destination: req.transport, dataType: "" };

  // Blocked decisions of one window by what their records say: the first is written at once
  // (the call fails after its row is durable); the rest of the window become one row with a count.
  let blocked = new Map<string, BlockedGroup>();
  const writeBlocked = (g: BlockedGroup, count: number, bytes: number): void => {
    const correlationId = g.correlationId ? { correlationId: g.correlationId } : {};
    const d = g.decision;
    tx(() => {
      deps.events.append({
        type: "egress.blocked.v1",
        tenant: d.tenant,
        schema: EgressBlockedSchema,
        payload: create(EgressBlockedSchema, { decision: d, count, payloadBytesTotal: BigInt(bytes) }),
        ...correlationId,
      });
      deps.audit.append({
        actor: "system",
        action: d.reason.startsWith("override_") ? "egress.override.denied" : "egress.blocked",
        tenant: d.tenant,
        resource: `egress/${d.transport}/${d.destination}`,
        outcome: "denied",
        details: {
          reason: d.reason,
          tier: d.tier,
          classification: d.classification,
          findings: Object.fromEntries(d.findings.map((f) => [f.type, f.count])),
          dataType: d.dataType,
          bytes,
          count,
        },
        ...correlationId,
      });
    });
  };
  const flushBlocked = (): void => {
    if (blocked.size === 0) return;
    const batch = blocked;
    blocked = new Map();
    for (const g of batch.values()) {
      if (g.count === 0) continue;
      try {
        writeBlocked(g, g.count, g.bytes);
      } catch (err) {
        log.error({ err, count: g.count, reason: g.decision.reason }, "could not write coalesced egress.blocked.v1");
      }
    }
  };

  function record(req: EgressRequest, d: EgressDecision, extra: RecordExtra): void {
    const latencyMs = performance.now() - extra.started;
    const tenant = TENANT_PATTERN.test(req.tenant) ? req.tenant : "unknown";
    const findings = Object.entries(extra.findings ?? {});
    const policyVersion = extra.policyVersion ?? "";
    requests.add(1, d.allowed ? "allowed" : "blocked", tenant, d.tier);
    latency.record(latencyMs, d.allowed ? ALLOWED_ATTRIBUTES : BLOCKED_ATTRIBUTES);
    // A blocked call is described by the door's description; an allowed one went out as it is.
    const where = d.allowed ? { destination: req.destination, dataType: req.dataType } : described(req);
    const groupKey = [
      tenant,
      d.tier,
      req.transport,
      where.destination,
      where.dataType,
      d.classification,
      d.reason,
      policyVersion,
      d.cached,
      findings.join(";"),
    ].join("\u0000");
    // Allowed calls (not break-glass) join the window's group of identical decisions.
    const group = d.allowed && !extra.override ? pending.get(groupKey) : undefined;
    if (group) {
      group.count++;
      group.bytes += extra.bytes;
      group.latencyMaxMs = Math.max(group.latencyMaxMs, latencyMs);
      return;
    }
    // Refusals group by what their records describe, whether or not the verdict was cached.
    const blockedKey = [tenant, d.tier, req.transport, where.destination, where.dataType, d.classification, d.reason]
      .concat(findings.map(([type, n]) => `${type}=${n}`))
      .join("\u0000");
    if (!d.allowed) {
      const seen = blocked.get(blockedKey);
      if (seen) {
        seen.count++;
        seen.bytes += extra.bytes;
        return;
      }
    }
    const decision = create(EgressDecisionSchema, {
      tenant,
      tier: d.tier,
      transport: req.transport,
      destination: where.destination,
      dataType: where.dataType,
      classification: d.classification,
      reason: d.reason,
      findings: findings.map(([type, count]) => ({ type, count })),
      payloadBytes: extra.bytes,
      policyVersion,
      cached: d.cached,
      latencyMs,
    });
    if (!d.allowed) {
      const g: BlockedGroup = { decision, correlationId: req.correlationId, count: 0, bytes: 0 };
      writeBlocked(g, 1, extra.bytes);
      blocked.set(blockedKey, g);
      if (blocked.size >= 512) flushBlocked();
      return;
    }
    if (!extra.override) {
      pending.set(groupKey, {
        decision,
        correlationId: req.correlationId,
        count: 1,
        bytes: extra.bytes,
        latencyMaxMs: latencyMs,
      });
      if (pending.size >= 512) flush();
      return;
    }
    const correlationId = req.correlationId ? { correlationId: req.correlationId } : {};
    const o = extra.override;
    tx(() => {
      deps.events.append({
        type: "egress.override.activated.v1",
        tenant,
        schema: EgressOverrideActivatedSchema,
        ...correlationId,
        payload: create(EgressOverrideActivatedSchema, {
          decision,
          grantId: o.id,
          reason: o.reason,
          declaredClassification: o.declared,
          approvers: o.approvers,
          expiresAtMs: BigInt(o.expiresAt),
        }),
      });
      deps.audit.append({
        actor: "system",
        action: "egress.override.activated",
        tenant,
        resource: `egress/${req.transport}/${req.destination}`,
        outcome: "ok",
        details: {
          reason: d.reason,
          tier: d.tier,
          classification: d.classification,
          findings: extra.findings ?? {},
          dataType: req.dataType,
          bytes: extra.bytes,
          grantId: o.id,
          grantReason: o.reason,
          approvers: o.approvers,
          expiresAt: o.expiresAt,
        },
        ...correlationId,
      });
    });
  }

  /** What every decision needs: the text the classifier reads, its size, the tier, the recorder. */
  function prepare(req: EgressRequest) {
    const started = performance.now();
    const carried = req.headers ? headersText(req.headers) : "";
    const body = payloadText(req.payload);
    const text = carried === "" ? body : `${body}\n${carried}`;
    const bytes = Buffer.byteLength(text);
    const validTenant = TENANT_PATTERN.test(req.tenant);
    const tier: TierName = validTenant ? (options.tenantTiers[req.tenant] ?? options.defaultTier) : options.defaultTier;
    const tierName = String(tier);
    const done = (
      allowed: boolean,
      reason: string,
      more: Partial<EgressDecision> = {},
      extra: Omit<RecordExtra, "bytes" | "started"> = {},
    ): EgressDecision => {
      const d: EgressDecision = { allowed, reason, tier: tierName, classification: "", cached: false, ...more };
      record(req, d, { ...extra, bytes, started });
      return d;
    };
    return { started, text, validTenant, tier, done };
  }

  /**
   * A verified grant applied to data of class `actual`: it passes only when the data is at or
   * below the declared class, and only then is the grant consumed.
   */
  function applyGrant(
    p: ReturnType<typeof prepare>,
    g: Extract<OverrideCheck, { ok: true }>,
    actual: string | undefined,
    cached: boolean,
  ): EgressDecision {
    const declared = g.grant.classification;
    // undefined = not asked: a D4 grant (covers every class) or DGE_ENABLED false. A DGE answer
    // without a class ("") is covered by no grant below D4.
    if (actual !== undefined && declared !== "D4" && !grantCovers(declared, actual))
      return p.done(false, "override_class_exceeded", { classification: actual, cached });
    if (!overrides.claim(g.grant)) return p.done(false, "override_replayed");
    return p.done(
      true,
      "override",
      { classification: actual ?? declared, cached },
      {
        override: {
          id: g.grant.id,
          reason: g.grant.reason,
          declared,
          approvers: g.approvers,
          expiresAt: g.grant.expiresAt,
        },
      },
    );
  }

  /** Decides without I/O when it can: undefined means the DGE (or Redis) has to be asked. */
  function decideLocally(req: EgressRequest, p: ReturnType<typeof prepare>): EgressDecision | undefined {
    const { done, tier } = p;
    if (req.tenant === "" && kernelDestinations.has(req.destination)) return done(true, "kernel_destination");
    if (!p.validTenant) return done(false, "invalid_tenant");
    // Air-gapped means nothing leaves, not even under break-glass.
    if (tier === "air-gapped") return done(false, "air_gapped");
    const tierKey = String(tier);
    const policy = cache.peekPolicy(req.tenant, tierKey);
    const hit = policy && cache.peekVerdict(req.tenant, verdictKey(tierKey, policy.version, req.destination, p.text));
    if (req.override) {
      const g = overrides.verify(req.override, req.tenant, req.destination);
      if (!g.ok) return done(false, g.reason);
      // A D4 grant covers every class; with DGE_ENABLED false nothing is classified at all (every
      // call passes with a warning), so a valid grant passes and is recorded as break-glass.
      if (g.grant.classification === "D4" || !options.dgeEnabled) return applyGrant(p, g, undefined, false);
      return hit ? applyGrant(p, g, hit.classification, true) : undefined;
    }
    if (!options.dgeEnabled) {
      log.warn(
        { tenant: req.tenant, destination: described(req).destination },
        "DGE_ENABLED is false: egress allowed without classification",
      );
      return done(true, "dge_disabled");
    }
    return (
      hit &&
      done(
        hit.allow,
        hit.reason,
        { classification: hit.classification, cached: true },
        { findings: hit.findings, policyVersion: hit.policyVersion },
      )
    );
  }

  // Identical questions in flight share one DGE round: a burst of one call on a cold or just-expired
  // verdict asks the DGE once, not once per waiting call. Keyed by everything a verdict depends on but
  // the policy version, which the round looks up itself. Every caller has the same budget
  // (dgeTimeoutMs from its own start), so the round ends before any later caller's deadline; a
  // follower whose caller leaves stops waiting, and a round whose own caller left is asked again.
  type Round = { signal: AbortSignal | undefined; result: Promise<{ verdict: CachedVerdict; cached: boolean }> };
  const rounds = new Map<string, Round>();

  async function sharedVerdict(
    req: EgressRequest,
    p: ReturnType<typeof prepare>,
  ): Promise<{ verdict: CachedVerdict; cached: boolean }> {
    const key = `${req.tenant}\n${p.tier}\n${req.destination}\n${p.text}`;
    for (let running = rounds.get(key); running; running = rounds.get(key)) {
      try {
        // Answered by another caller's round: for this call, as good as a cached verdict.
        return { verdict: (await untilAborted(running.result, req.signal)).verdict, cached: true };
      } catch (err) {
        if (req.signal?.aborted || !running.signal?.aborted) throw err;
        // That caller left: join the round a fellow follower may have started since, else start one.
        if (rounds.get(key) === running) rounds.delete(key);
      }
    }
    const round: Round = {
      signal: req.signal,
      result: classifyAndValidate(req, p.tier, p.text, p.started + options.dgeTimeoutMs),
    };
    rounds.set(key, round);
    try {
      return await round.result;
    } finally {
      if (rounds.get(key) === round) rounds.delete(key);
    }
  }

  /** The class of the data under a grant: the cached verdict's, else the DGE's Classify. */
  async function classOf(req: EgressRequest, p: ReturnType<typeof prepare>): Promise<[string, boolean]> {
    const tierKey = String(p.tier);
    const policy = await cache.getPolicy(req.tenant, tierKey);
    const hit =
      policy && (await cache.getVerdict(req.tenant, verdictKey(tierKey, policy.version, req.destination, p.text)));
    if (hit) return [hit.classification, true];
    const { classification } = await withDeadline(p.started + options.dgeTimeoutMs, req.signal, (o) =>
      deps.dge.classify(
        {
          data: p.text,
          context: { tenant: req.tenant, dataType: described(req).dataType, correlationId: req.correlationId ?? "" },
        },
        o,
      ),
    );
    return [classification ? egressClassName(classification.egressClass) : "", false];
  }

  /** The decision that needs the DGE (or Redis): decideLocally had none. */
  async function decideRemotely(req: EgressRequest, p: ReturnType<typeof prepare>): Promise<EgressDecision> {
    try {
      if (req.override) {
        const [actual, cached] = await classOf(req, p);
        // Verified again after the await: the grant may have expired or been used meanwhile.
        const g = overrides.verify(req.override, req.tenant, req.destination);
        if (!g.ok) return p.done(false, g.reason);
        return applyGrant(p, g, actual, cached);
      }
      const { verdict, cached } = await sharedVerdict(req, p);
      return p.done(
        verdict.allow,
        verdict.reason,
        { classification: verdict.classification, cached },
        { findings: verdict.findings, policyVersion: verdict.policyVersion },
      );
    } catch (err) {
      const reason =
        err instanceof DgeTimeoutError
          ? "dge_timeout"
          : findSignatureError(err)
            ? "dge_signature_invalid"
            : req.signal?.aborted
              ? "caller_aborted"
              : "dge_error";
      dgeErrors.add(1, { reason });
      log.warn(
        { err, tenant: req.tenant, destination: described(req).destination, reason },
        "no usable DGE answer: egress denied",
      );
      return p.done(false, reason);
    }
  }

  function decide(req: EgressRequest): EgressDecision | Promise<EgressDecision> {
    const p = prepare(req);
    return decideLocally(req, p) ?? decideRemotely(req, p);
  }

  return {
    check: async (req) => decide(req),
    checkNow: (req) => decideLocally(req, prepare(req)),
    decide,
    invalidate: (tenant, reason) => cache.invalidate({ tenant, tier: "", reason }),
    flush: () => {
      flush();
      flushBlocked();
    },
    async close() {
      clearInterval(timer);
      flush();
      flushBlocked();
      hitRate.removeCallback(cb);
      await cache.close();
    },
  };
}

/** `promise`, or the signal's reason as soon as it aborts. */
function untilAborted<T>(promise: Promise<T>, signal: AbortSignal | undefined): Promise<T> {
  if (!signal) return promise;
  if (signal.aborted) return Promise.reject(signal.reason as Error);
  return new Promise<T>((resolve, reject) => {
    const onAbort = (): void => reject(signal.reason as Error);
    signal.addEventListener("abort", onAbort, { once: true });
    promise.then(resolve, reject).finally(() => signal.removeEventListener("abort", onAbort));
  });
}

function findSignatureError(err: unknown): DgeSignatureError | undefined {
  for (let e: unknown = err, i = 0; e && i < 5; e = (e as { cause?: unknown }).cause, i++) {
    if (e instanceof DgeSignatureError) return e;
  }
  return undefined;
}
