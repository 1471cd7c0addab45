import { ConfigError } from "../common/errors.js";

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
  /** grpc-js reconnect backoff cap, so a returning agent is found quickly, ms. @default 1000 */
  maxReconnectBackoffMs: number;
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
export const DEFAULT_CIRCUIT_BREAKER_OPTIONS: CircuitBreakerOptions = { consecutiveFailures: 5, halfOpenAfterMs: 5_000 };
/** Default hedging (off). */
export const DEFAULT_HEDGING_OPTIONS: HedgingOptions = { enabled: false, delayMs: 50 };
/** Default hop deadlines. */
export const DEFAULT_TIMEOUT_OPTIONS: TimeoutOptions = { perHopMaxMs: 10_000, defaultDeadlineMs: 30_000, minAttemptMs: 5 };
/** Default channel pool. */
export const DEFAULT_CHANNEL_POOL_OPTIONS: ChannelPoolOptions = { idleMs: 60_000, maxReconnectBackoffMs: 1_000 };

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

type Check = (v: unknown) => boolean;
const isObject = (v: unknown): v is Record<string, unknown> => typeof v === "object" && v !== null && !Array.isArray(v);
const positive: Check = (v) => typeof v === "number" && Number.isFinite(v) && v > 0;
const nonNegative: Check = (v) => typeof v === "number" && Number.isFinite(v) && v >= 0;
const intAtLeast = (min: number): Check => (v) => Number.isInteger(v) && (v as number) >= min;
const fraction: Check = (v) => typeof v === "number" && v >= 0 && v <= 1;
const isString: Check = (v) => typeof v === "string" && v.length > 0;

function section<T extends object>(input: unknown, defaults: T, path: string, rules: { [K in keyof T]: [Check, string] }): T {
  if (input === undefined) return { ...defaults };
  if (!isObject(input)) throw new ConfigError(`${path} must be an object`);
  const out = { ...defaults };
  for (const key of Object.keys(input)) {
    if (!(key in rules)) throw new ConfigError(`${path}.${key} is not a known option`);
    const value = input[key];
    if (value === undefined) continue;
    const [check, what] = rules[key as keyof T];
    if (!check(value)) throw new ConfigError(`${path}.${key} must be ${what}`);
    (out as Record<string, unknown>)[key] = value;
  }
  return out;
}

function stringList(v: unknown, path: string): string[] {
  if (v === undefined) return [];
  if (!Array.isArray(v) || !v.every(isString)) throw new ConfigError(`${path} must be a list of non-empty strings`);
  return [...(v as string[])];
}

function resolveRoute(input: unknown, path: string): StaticRoute {
  if (!isObject(input)) throw new ConfigError(`${path} must be an object`);
  for (const key of Object.keys(input)) {
    if (!["capability", "tenants", "targets", "fallbacks", "strict"].includes(key)) throw new ConfigError(`${path}.${key} is not a known option`);
  }
  if (!isString(input.capability)) throw new ConfigError(`${path}.capability must be a non-empty string`);
  if (!Array.isArray(input.targets) || input.targets.length === 0) throw new ConfigError(`${path}.targets must be a non-empty list`);
  const targets = input.targets.map((t: unknown, i): RouteTarget => {
    const p = `${path}.targets[${i}]`;
    if (!isObject(t) || !isString(t.agent)) throw new ConfigError(`${p}.agent must be a non-empty string`);
    const weight = t.weight ?? 1;
    if (!positive(weight)) throw new ConfigError(`${p}.weight must be a number > 0`);
    return { agent: t.agent as string, weight: weight as number };
  });
  if (input.strict !== undefined && typeof input.strict !== "boolean") throw new ConfigError(`${path}.strict must be a boolean`);
  return {
    capability: input.capability as string,
    tenants: stringList(input.tenants, `${path}.tenants`),
    targets,
    fallbacks: stringList(input.fallbacks, `${path}.fallbacks`),
    strict: input.strict ?? false,
  };
}

/** Fills defaults and validates the routing options; throws ConfigError naming the bad field. */
export function resolveRoutingOptions(input: unknown = {}, path = "routing"): RoutingOptions {
  if (!isObject(input)) throw new ConfigError(`${path} must be an object`);
  const known = ["routes", "scoring", "retry", "circuitBreaker", "hedging", "timeouts", "channels", "idempotentCapabilities"];
  for (const key of Object.keys(input)) {
    if (!known.includes(key)) throw new ConfigError(`${path}.${key} is not a known option`);
  }
  if (input.routes !== undefined && !Array.isArray(input.routes)) throw new ConfigError(`${path}.routes must be a list`);
  const routes = ((input.routes as unknown[] | undefined) ?? []).map((r, i) => resolveRoute(r, `${path}.routes[${i}]`));
  const options: RoutingOptions = {
    routes,
    scoring: section(input.scoring, DEFAULT_SCORING_OPTIONS, `${path}.scoring`, {
      ewmaAlpha: [(v) => positive(v) && (v as number) <= 1, "a number in (0, 1]"],
      decayMs: [positive, "a number > 0"],
      latencyFloorMs: [positive, "a number > 0"],
      errorPenalty: [nonNegative, "a number >= 0"],
      heartbeatFreshMs: [positive, "a number > 0"],
      stalePenalty: [(v) => positive(v) && (v as number) <= 1, "a number in (0, 1]"],
      tieTolerance: [(v) => fraction(v) && (v as number) < 1, "a number in [0, 1)"],
      exploreRatio: [fraction, "a number in [0, 1]"],
    }),
    retry: section(input.retry, DEFAULT_RETRY_OPTIONS, `${path}.retry`, {
      maxAttempts: [intAtLeast(1), "an integer >= 1"],
      maxReroutes: [intAtLeast(0), "an integer >= 0"],
      baseDelayMs: [nonNegative, "a number >= 0"],
      maxDelayMs: [nonNegative, "a number >= 0"],
      budgetRatio: [fraction, "a number in [0, 1]"],
      budgetMinPerSecond: [nonNegative, "a number >= 0"],
      budgetWindowMs: [intAtLeast(1), "an integer >= 1"],
    }),
    circuitBreaker: section(input.circuitBreaker, DEFAULT_CIRCUIT_BREAKER_OPTIONS, `${path}.circuitBreaker`, {
      consecutiveFailures: [intAtLeast(1), "an integer >= 1"],
      halfOpenAfterMs: [intAtLeast(1), "an integer >= 1"],
    }),
    hedging: section(input.hedging, DEFAULT_HEDGING_OPTIONS, `${path}.hedging`, {
      enabled: [(v) => typeof v === "boolean", "a boolean"],
      delayMs: [intAtLeast(1), "an integer >= 1"],
    }),
    timeouts: section(input.timeouts, DEFAULT_TIMEOUT_OPTIONS, `${path}.timeouts`, {
      perHopMaxMs: [intAtLeast(1), "an integer >= 1"],
      defaultDeadlineMs: [intAtLeast(1), "an integer >= 1"],
      minAttemptMs: [intAtLeast(0), "an integer >= 0"],
    }),
    channels: section(input.channels, DEFAULT_CHANNEL_POOL_OPTIONS, `${path}.channels`, {
      idleMs: [intAtLeast(1), "an integer >= 1"],
      maxReconnectBackoffMs: [intAtLeast(100), "an integer >= 100"],
    }),
    idempotentCapabilities: stringList(input.idempotentCapabilities, `${path}.idempotentCapabilities`),
  };
  if (options.retry.maxDelayMs < options.retry.baseDelayMs) {
    throw new ConfigError(`${path}.retry.maxDelayMs must be >= ${path}.retry.baseDelayMs`);
  }
  return options;
}
