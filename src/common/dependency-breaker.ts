import type { Meter } from "@opentelemetry/api";
import {
  BrokenCircuitError,
  CircuitState,
  ConsecutiveBreaker,
  circuitBreaker,
  handleWhen,
  IsolatedCircuitError,
} from "cockatiel";
import { ConfigError, KernelError } from "./errors.js";
import { readInt, readSection } from "./fields.js";
import type { Logger } from "pino";

/** The dependency's circuit is open: the call was not attempted (go to the fallback now). */
export class DependencyUnavailableError extends KernelError {
  override name = "DependencyUnavailableError";
}

/** The dependency gave no answer within the call's budget. */
export class DependencyTimeoutError extends KernelError {
  override name = "DependencyTimeoutError";
}

/** Budget and breaker settings of one dependency. */
export interface DependencyBreakerOptions {
  /** Longest one call may wait for an answer, ms; a caller's own deadline can only shorten it. */
  budgetMs: number;
  /** Consecutive failed calls (timeouts included) that open the circuit. @default 3 */
  failuresToTrip: number;
  /** How long an open circuit refuses calls before a health probe may test the dependency, ms. @default 1000 */
  halfOpenAfterMs: number;
  /** How often the dependency's health probe runs (it is what closes the circuit again), ms. @default 500 */
  probeIntervalMs: number;
}

/** Default consecutive failures that open a circuit. */
export const DEFAULT_BREAKER_FAILURES_TO_TRIP = 3;
/** Default time an open circuit waits before a probe may test the dependency. */
export const DEFAULT_BREAKER_HALF_OPEN_AFTER_MS = 1000;
/** Default health probe interval. */
export const DEFAULT_BREAKER_PROBE_INTERVAL_MS = 500;

/** Validates one dependency's section (budgetMs default given by the dependency); ConfigError names the field. */
export function resolveDependencyBreakerOptions(
  input: unknown,
  path: string,
  defaults: Pick<DependencyBreakerOptions, "budgetMs"> & Partial<DependencyBreakerOptions>,
): DependencyBreakerOptions {
  const d: DependencyBreakerOptions = {
    failuresToTrip: DEFAULT_BREAKER_FAILURES_TO_TRIP,
    halfOpenAfterMs: DEFAULT_BREAKER_HALF_OPEN_AFTER_MS,
    probeIntervalMs: DEFAULT_BREAKER_PROBE_INTERVAL_MS,
    ...defaults,
  };
  const s = readSection(input ?? {}, path, d);
  const o: DependencyBreakerOptions = {
    budgetMs: readInt(s, "budgetMs", path, d.budgetMs, 1, 60_000),
    failuresToTrip: readInt(s, "failuresToTrip", path, d.failuresToTrip, 1, 1000),
    halfOpenAfterMs: readInt(s, "halfOpenAfterMs", path, d.halfOpenAfterMs, 10, 600_000),
    probeIntervalMs: readInt(s, "probeIntervalMs", path, d.probeIntervalMs, 10, 600_000),
  };
  if (o.probeIntervalMs < o.budgetMs)
    throw new ConfigError(`${path}.probeIntervalMs must be at least budgetMs (${o.budgetMs})`);
  return o;
}

/** What a breaker needs. */
export interface DependencyBreakerDeps {
  logger: Logger;
  /** When given: nops_dependency_circuit_state and nops_dependency_call_failures. */
  meter?: Meter;
  /** Wall clock for "since" in reports. @default Date.now */
  now?: () => number;
  /**
   * Whether an error means the dependency failed. Answers such as "invalid argument" prove it is
   * alive and should not open the circuit. @default every error
   */
  isFailure?: (err: unknown) => boolean;
}

/** Health of a dependency as its breaker sees it (shape of a DependencyStatus). */
export interface BreakerStatus {
  name: string;
  state: "ok" | "down";
  detail?: string;
}

/** Per-call settings. */
export interface BreakerCallOptions {
  /** Shorter budget for this call (e.g. what is left of the RPC's deadline), ms. */
  budgetMs?: number;
  /** The caller's abort signal: its abort is the caller's doing and does not count against the dependency. */
  signal?: AbortSignal;
}

/**
 * Deadline budget plus circuit breaker (cockatiel) in front of one dependency: every call gets at
 * most `budgetMs`; `failuresToTrip` failures in a row open the circuit, after which calls fail at
 * once with DependencyUnavailableError so callers take their fallback without waiting. Only the
 * health probe tests an open circuit (after `halfOpenAfterMs`), so no caller ever pays for the
 * test call, and the circuit closes on its own when the probe gets an answer.
 */
export interface DependencyBreaker {
  readonly name: string;
  readonly options: DependencyBreakerOptions;
  /** Runs a call under the budget; fails fast while the circuit is not closed. */
  call<T>(fn: (signal: AbortSignal) => PromiseLike<T>, options?: BreakerCallOptions): Promise<T>;
  /** Runs a health check through the breaker: allowed while open once halfOpenAfterMs passed. */
  probe<T>(fn: (signal: AbortSignal) => PromiseLike<T>): Promise<T>;
  /** True while calls are refused (open or half-open). */
  isOpen(): boolean;
  /** "closed" | "open" | "half-open". */
  state(): "closed" | "open" | "half-open";
  /** ok while closed; down with the last failure while open. */
  status(): BreakerStatus;
}

const STATE_NAME = {
  [CircuitState.Closed]: "closed",
  [CircuitState.Open]: "open",
  [CircuitState.HalfOpen]: "half-open",
  [CircuitState.Isolated]: "open",
} as const;
const STATE_VALUE = { closed: 0, "half-open": 1, open: 2 } as const;

/** Raised inside the policy when the caller aborted: not the dependency's fault, not counted. */
class CallerAborted extends Error {
  constructor(readonly original: unknown) {
    super("caller aborted");
  }
}

/** Creates the breaker of the dependency called `name`. */
export function createDependencyBreaker(
  deps: DependencyBreakerDeps,
  name: string,
  options: DependencyBreakerOptions,
): DependencyBreaker {
  const log = deps.logger.child({ dependency: name });
  const now = deps.now ?? Date.now;
  const isFailure = deps.isFailure ?? (() => true);
  const policy = circuitBreaker(
    handleWhen((err) => !(err instanceof CallerAborted) && isFailure(err)),
    { halfOpenAfter: options.halfOpenAfterMs, breaker: new ConsecutiveBreaker(options.failuresToTrip) },
  );
  let lastFailure = "";
  let openedAt = 0;
  const failures = deps.meter?.createCounter("nops_dependency_call_failures", {
    description:
      "Dependency calls that failed, by outcome: timeout (no answer within the budget), error, shed (circuit open)",
  });
  deps.meter
    ?.createObservableGauge("nops_dependency_circuit_state", {
      description: "Circuit of each dependency: 0 closed, 1 half-open (probing), 2 open (calls go to the fallback)",
    })
    .addCallback((r) => r.observe(STATE_VALUE[STATE_NAME[policy.state]], { dependency: name }));
  policy.onBreak(() => {
    openedAt = now();
    log.warn({ reason: lastFailure }, "dependency not answering: circuit open, callers use their fallback");
  });
  policy.onReset(() => log.info("dependency answering again: circuit closed"));

  const describe = (err: unknown): string => (err instanceof Error ? err.message : String(err));

  async function withBudget<T>(
    fn: (signal: AbortSignal) => PromiseLike<T>,
    budgetMs: number,
    outer: AbortSignal | undefined,
  ): Promise<T> {
    if (outer?.aborted) throw new CallerAborted(outer.reason);
    const ac = new AbortController();
    let settle: ((err: unknown) => void) | undefined;
    // Races fn so that a call which ignores its signal still gives up on time.
    const cut = new Promise<never>((_, reject) => (settle = reject));
    const timer = setTimeout(() => {
      const e = new DependencyTimeoutError(`${name} gave no answer within ${budgetMs} ms`);
      ac.abort(e);
      settle?.(e);
    }, budgetMs);
    const onAbort = (): void => {
      ac.abort(outer?.reason);
      settle?.(new CallerAborted(outer?.reason));
    };
    outer?.addEventListener("abort", onAbort, { once: true });
    try {
      return await Promise.race([fn(ac.signal), cut]);
    } catch (err) {
      if (err instanceof CallerAborted) throw err;
      if (outer?.aborted) throw new CallerAborted(err);
      if (!isFailure(err)) throw err;
      lastFailure = describe(err);
      failures?.add(1, { dependency: name, outcome: err instanceof DependencyTimeoutError ? "timeout" : "error" });
      throw err;
    } finally {
      clearTimeout(timer);
      outer?.removeEventListener("abort", onAbort);
    }
  }

  const unwrap = (err: unknown): never => {
    if (err instanceof CallerAborted) throw err.original;
    if (err instanceof BrokenCircuitError || err instanceof IsolatedCircuitError)
      throw new DependencyUnavailableError(`${name} circuit open: ${lastFailure}`, { cause: err });
    throw err;
  };

  const state = (): "closed" | "open" | "half-open" => STATE_NAME[policy.state];
  return {
    name,
    options,
    async call(fn, callOptions) {
      if (policy.state !== CircuitState.Closed) {
        failures?.add(1, { dependency: name, outcome: "shed" });
        throw new DependencyUnavailableError(`${name} circuit open: ${lastFailure}`);
      }
      const budget = Math.max(1, Math.min(options.budgetMs, callOptions?.budgetMs ?? Infinity));
      return policy.execute(() => withBudget(fn, budget, callOptions?.signal)).catch(unwrap);
    },
    probe: (fn) => policy.execute(() => withBudget(fn, options.budgetMs, undefined)).catch(unwrap),
    isOpen: () => policy.state !== CircuitState.Closed,
    state,
    status() {
      if (policy.state === CircuitState.Closed) return { name, state: "ok" };
      return {
        name,
        state: "down",
        detail: `not answering (${lastFailure}); circuit ${state()} since ${new Date(openedAt).toISOString()}, callers use their fallback`,
      };
    },
  };
}
