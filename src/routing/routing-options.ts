import {
  ConfigError,
  readBool,
  readInt,
  readNumber,
  readObject,
  readSection,
  readString,
  readStringList,
} from "../common/index.js";

/** One weighted target of a static route: an agent named by its name or id. */
export interface RouteTarget {
  /** Agent name or id. */
  agent: string;
  /** Relative share of traffic, > 0. @default 1 */
  weight: number;
}

/** A static routing table entry for one capability. */
export interface StaticRoute {
  /** Capability name the route applies to. */
  capability: string;
  /** Tenants the route applies to; empty means every tenant. @default [] */
  tenants: string[];
  /** Preferred agents and their weights. */
  targets: RouteTarget[];
  /** Agents (names or ids) used, with equal weights, when no target is available. @default [] */
  fallbacks: string[];
  /** When neither targets nor fallbacks are available: false routes to any live agent, true fails. @default false */
  strict: boolean;
}

/** How the health score is built. */
export interface ScoringOptions {
  /** Weight of a new latency / error sample in the EWMAs, 0 < alpha <= 1. @default 0.3 */
  ewmaAlpha: number;
  /** Observed latency and error rate fade with this time constant while an agent gets no calls, ms. @default 10000 */
  decayMs: number;
  /** Added to the latency before scoring so sub-millisecond jitter does not swing the choice. @default 5 */
  latencyFloorMs: number;
  /** How much an error rate of 1 multiplies the cost (cost × (1 + penalty × rate)). @default 10 */
  errorPenalty: number;
  /** A heartbeat younger than this is fresh; older ones lower the score proportionally. @default 15000 */
  heartbeatFreshMs: number;
  /** Score multiplier for agents the registry reports STALE. @default 0.5 */
  stalePenalty: number;
  /** Two scores closer than this fraction count as equal; ties are broken at random so weights hold. @default 0.1 */
  tieTolerance: number;
  /** Probability of ignoring scores for one pick, so a demoted agent gets samples to recover. @default 0.02 */
  exploreRatio: number;
}

/** Retries with exponential backoff, full jitter and a budget. */
export interface RetryOptions {
  /** Attempts that reached an agent, first one included. @default 3 */
  maxAttempts: number;
  /** Extra attempts for calls that never reached an agent (connection refused, circuit opened meanwhile). @default 3 */
  maxReroutes: number;
  /** Base of the exponential backoff, ms. @default 10 */
  baseDelayMs: number;
  /** Cap of the exponential backoff, ms. @default 200 */
  maxDelayMs: number;
  /** Retries (and hedges) may add at most this fraction of the request rate. @default 0.2 */
  budgetRatio: number;
  /** Retries per second always allowed, so low traffic can still retry. @default 10 */
  budgetMinPerSecond: number;
  /** Sliding window the budget is computed over, ms. @default 10000 */
  budgetWindowMs: number;
}

/** Per-agent circuit breaker thresholds. */
export interface CircuitBreakerOptions {
  /** Consecutive failures that open the circuit. @default 5 */
  consecutiveFailures: number;
  /** Time an open circuit waits before letting one probe through (half-open), ms. @default 5000 */
  halfOpenAfterMs: number;
  /**
   * How long an agent whose endpoint failed its identity check is not picked, unless its
   * registration changes first; then one fresh handshake is tried again (a trust bundle that
   * lagged a CA rotation must not bar a genuine agent for good), ms. @default 60000
   */
  identityMismatchHoldMs: number;
}

/** Hedging for stragglers (idempotent unary calls only). */
export interface HedgingOptions {
  /** @default false */
  enabled: boolean;
  /** Start a second attempt on another agent when the first has not answered after this, ms. @default 50 */
  delayMs: number;
}

/** Deadlines of outbound hops. */
export interface TimeoutOptions {
  /** Longest single hop, ms; a hop never outlives the caller's deadline either. @default 10000 */
  perHopMaxMs: number;
  /** Deadline used when the caller sent none, ms. @default 30000 */
  defaultDeadlineMs: number;
  /** No attempt starts with less time than this left, ms. @default 5 */
  minAttemptMs: number;
}

/** Outbound channel pool. */
export interface ChannelPoolOptions {
  /** Close a channel when its endpoint was neither listed nor used for this long, ms. @default 60000 */
  idleMs: number;
  /** Reconnect backoff cap after a failed connection, so a returning agent is found quickly, ms. @default 1000 */
  maxReconnectBackoffMs: number;
  /** HTTP/2 sessions per endpoint at most; another opens only while every open one has calls in flight. @default 2 */
  sessionsPerEndpoint: number;
  /** Largest request or answer message of an agent call, bytes (gRPC's usual receive limit). @default 4194304 */
  maxMessageBytes: number;
}

/** Options of the router (config section `routing`). */
export interface RoutingOptions {
  /** Static routing tables. @default [] */
  routes: StaticRoute[];
  scoring: ScoringOptions;
  retry: RetryOptions;
  circuitBreaker: CircuitBreakerOptions;
  hedging: HedgingOptions;
  timeouts: TimeoutOptions;
  channels: ChannelPoolOptions;
  /** Capabilities whose requests are idempotent even when the caller did not say so. @default [] */
  idempotentCapabilities: string[];
}

/** Default scoring. */
export const DEFAULT_SCORING_OPTIONS: ScoringOptions = {
  ewmaAlpha: 0.3,
  decayMs: 10_000,
  latencyFloorMs: 5,
  errorPenalty: 10,
  heartbeatFreshMs: 15_000,
  stalePenalty: 0.5,
  tieTolerance: 0.1,
  exploreRatio: 0.02,
};
/** Default retries. */
export const DEFAULT_RETRY_OPTIONS: RetryOptions = {
  maxAttempts: 3,
  maxReroutes: 3,
  baseDelayMs: 10,
  maxDelayMs: 200,
  budgetRatio: 0.2,
  budgetMinPerSecond: 10,
  budgetWindowMs: 10_000,
};
/** Default circuit breaker. */
export const DEFAULT_CIRCUIT_BREAKER_OPTIONS: CircuitBreakerOptions = {
  consecutiveFailures: 5,
  halfOpenAfterMs: 5_000,
  identityMismatchHoldMs: 60_000,
};
/** Default hedging (off). */
export const DEFAULT_HEDGING_OPTIONS: HedgingOptions = { enabled: false, delayMs: 50 };
/** Default hop deadlines. */
export const DEFAULT_TIMEOUT_OPTIONS: TimeoutOptions = {
  perHopMaxMs: 10_000,
  defaultDeadlineMs: 30_000,
  minAttemptMs: 5,
};
/** Default channel pool. */
export const DEFAULT_CHANNEL_POOL_OPTIONS: ChannelPoolOptions = {
  idleMs: 60_000,
  maxReconnectBackoffMs: 1_000,
  sessionsPerEndpoint: 2,
  maxMessageBytes: 4 * 1024 * 1024,
};

/** A partial, plain-object version of the options as read from config. */
export type RoutingOptionsInput = {
  routes?: Array<Partial<Omit<StaticRoute, "targets">> & { targets?: Array<Partial<RouteTarget>> }>;
  scoring?: Partial<ScoringOptions>;
  retry?: Partial<RetryOptions>;
  circuitBreaker?: Partial<CircuitBreakerOptions>;
  hedging?: Partial<HedgingOptions>;
  timeouts?: Partial<TimeoutOptions>;
  channels?: Partial<ChannelPoolOptions>;
  idempotentCapabilities?: string[];
};

/** Every default, also the set of known keys. */
export const DEFAULT_ROUTING_OPTIONS: Readonly<RoutingOptions> = {
  routes: [],
  scoring: DEFAULT_SCORING_OPTIONS,
  retry: DEFAULT_RETRY_OPTIONS,
  circuitBreaker: DEFAULT_CIRCUIT_BREAKER_OPTIONS,
  hedging: DEFAULT_HEDGING_OPTIONS,
  timeouts: DEFAULT_TIMEOUT_OPTIONS,
  channels: DEFAULT_CHANNEL_POOL_OPTIONS,
  idempotentCapabilities: [],
};

const ROUTE_KEYS = { capability: "", tenants: [], targets: [], fallbacks: [], strict: false };
const ABOVE_MIN = { exclusiveMin: true };
const NON_EMPTY = { nonEmpty: true };

function resolveRoute(input: unknown, path: string): StaticRoute {
  const r = readSection(input, path, ROUTE_KEYS);
  const capability = readString(r, "capability", path, "", NON_EMPTY);
  if (!Array.isArray(r.targets) || r.targets.length === 0)
    throw new ConfigError(`${path}.targets must be a non-empty list`);
  const targets = r.targets.map((raw: unknown, i): RouteTarget => {
    const t = readObject(raw, `${path}.targets[${i}]`);
    return {
      agent: readString(t, "agent", `${path}.targets[${i}]`, "", NON_EMPTY),
      // Weights are relative shares, so fractions are fine.
      weight: readNumber(t, "weight", `${path}.targets[${i}]`, 1, 0, Infinity, ABOVE_MIN),
    };
  });
  return {
    capability,
    tenants: readStringList(r, "tenants", path, [], NON_EMPTY),
    targets,
    fallbacks: readStringList(r, "fallbacks", path, [], NON_EMPTY),
    strict: readBool(r, "strict", path, false),
  };
}

/** Fills defaults and validates the routing options; throws ConfigError naming the bad field. */
export function resolveRoutingOptions(input: unknown = {}, path = "routing"): RoutingOptions {
  const s = readSection(input, path, DEFAULT_ROUTING_OPTIONS);
  if (s.routes !== undefined && !Array.isArray(s.routes)) throw new ConfigError(`${path}.routes must be a list`);
  const routes = ((s.routes as unknown[] | undefined) ?? []).map((r, i) => resolveRoute(r, `${path}.routes[${i}]`));

  const sp = `${path}.scoring`;
  const sc = readSection(s.scoring, sp, DEFAULT_SCORING_OPTIONS);
  const ds = DEFAULT_SCORING_OPTIONS;
  const scoring: ScoringOptions = {
    ewmaAlpha: readNumber(sc, "ewmaAlpha", sp, ds.ewmaAlpha, 0, 1, ABOVE_MIN),
    decayMs: readNumber(sc, "decayMs", sp, ds.decayMs, 0, Infinity, ABOVE_MIN),
    latencyFloorMs: readNumber(sc, "latencyFloorMs", sp, ds.latencyFloorMs, 0, Infinity, ABOVE_MIN),
    errorPenalty: readNumber(sc, "errorPenalty", sp, ds.errorPenalty, 0),
    heartbeatFreshMs: readNumber(sc, "heartbeatFreshMs", sp, ds.heartbeatFreshMs, 0, Infinity, ABOVE_MIN),
    stalePenalty: readNumber(sc, "stalePenalty", sp, ds.stalePenalty, 0, 1, ABOVE_MIN),
    tieTolerance: readNumber(sc, "tieTolerance", sp, ds.tieTolerance, 0, 1, { exclusiveMax: true }),
    exploreRatio: readNumber(sc, "exploreRatio", sp, ds.exploreRatio, 0, 1),
  };

  const rp = `${path}.retry`;
  const re = readSection(s.retry, rp, DEFAULT_RETRY_OPTIONS);
  const dr = DEFAULT_RETRY_OPTIONS;
  const retry: RetryOptions = {
    maxAttempts: readInt(re, "maxAttempts", rp, dr.maxAttempts, 1),
    maxReroutes: readInt(re, "maxReroutes", rp, dr.maxReroutes, 0),
    baseDelayMs: readNumber(re, "baseDelayMs", rp, dr.baseDelayMs, 0),
    maxDelayMs: readNumber(re, "maxDelayMs", rp, dr.maxDelayMs, 0),
    budgetRatio: readNumber(re, "budgetRatio", rp, dr.budgetRatio, 0, 1),
    budgetMinPerSecond: readNumber(re, "budgetMinPerSecond", rp, dr.budgetMinPerSecond, 0),
    budgetWindowMs: readInt(re, "budgetWindowMs", rp, dr.budgetWindowMs, 1),
  };
  if (retry.maxDelayMs < retry.baseDelayMs) throw new ConfigError(`${rp}.maxDelayMs must be >= ${rp}.baseDelayMs`);

  const cp = `${path}.circuitBreaker`;
  const cb = readSection(s.circuitBreaker, cp, DEFAULT_CIRCUIT_BREAKER_OPTIONS);
  const hp = `${path}.hedging`;
  const he = readSection(s.hedging, hp, DEFAULT_HEDGING_OPTIONS);
  const tp = `${path}.timeouts`;
  const to = readSection(s.timeouts, tp, DEFAULT_TIMEOUT_OPTIONS);
  const chp = `${path}.channels`;
  const ch = readSection(s.channels, chp, DEFAULT_CHANNEL_POOL_OPTIONS);
  return {
    routes,
    scoring,
    retry,
    circuitBreaker: {
      consecutiveFailures: readInt(
        cb,
        "consecutiveFailures",
        cp,
        DEFAULT_CIRCUIT_BREAKER_OPTIONS.consecutiveFailures,
        1,
      ),
      halfOpenAfterMs: readInt(cb, "halfOpenAfterMs", cp, DEFAULT_CIRCUIT_BREAKER_OPTIONS.halfOpenAfterMs, 1),
      identityMismatchHoldMs: readInt(
        cb,
        "identityMismatchHoldMs",
        cp,
        DEFAULT_CIRCUIT_BREAKER_OPTIONS.identityMismatchHoldMs,
        1,
      ),
    },
    hedging: {
      enabled: readBool(he, "enabled", hp, DEFAULT_HEDGING_OPTIONS.enabled),
      delayMs: readInt(he, "delayMs", hp, DEFAULT_HEDGING_OPTIONS.delayMs, 1),
    },
    timeouts: {
      perHopMaxMs: readInt(to, "perHopMaxMs", tp, DEFAULT_TIMEOUT_OPTIONS.perHopMaxMs, 1),
      defaultDeadlineMs: readInt(to, "defaultDeadlineMs", tp, DEFAULT_TIMEOUT_OPTIONS.defaultDeadlineMs, 1),
      minAttemptMs: readInt(to, "minAttemptMs", tp, DEFAULT_TIMEOUT_OPTIONS.minAttemptMs, 0),
    },
    channels: {
      idleMs: readInt(ch, "idleMs", chp, DEFAULT_CHANNEL_POOL_OPTIONS.idleMs, 1),
      maxReconnectBackoffMs: readInt(
        ch,
        "maxReconnectBackoffMs",
        chp,
        DEFAULT_CHANNEL_POOL_OPTIONS.maxReconnectBackoffMs,
        100,
      ),
      sessionsPerEndpoint: readInt(
        ch,
        "sessionsPerEndpoint",
        chp,
        DEFAULT_CHANNEL_POOL_OPTIONS.sessionsPerEndpoint,
        1,
        64,
      ),
      maxMessageBytes: readInt(
        ch,
        "maxMessageBytes",
        chp,
        DEFAULT_CHANNEL_POOL_OPTIONS.maxMessageBytes,
        1024,
        2 ** 31 - 1,
      ),
    },
    idempotentCapabilities: readStringList(s, "idempotentCapabilities", path, [], NON_EMPTY),
  };
}
