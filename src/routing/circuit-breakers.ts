import { CircuitState, ConsecutiveBreaker, circuitBreaker, handleWhen, type CircuitBreakerPolicy } from "cockatiel";
import type { CircuitBreakerOptions } from "./routing-options.js";

/** State of one agent's circuit as the router reports it. */
export type CircuitStateName = "closed" | "open" | "half-open";

/** One circuit breaker per agent (cockatiel), keyed by agent id. */
export interface CircuitBreakers {
  /** The agent's breaker, created closed on first use. */
  get(agentId: string): CircuitBreakerPolicy;
  /**
   * False while the circuit is open and not yet due for a probe, or while the half-open probe is
   * in flight: the router must not pick the agent then.
   */
  isRoutable(agentId: string): boolean;
  state(agentId: string): CircuitStateName;
  forget(agentId: string): void;
}

/** Creates the per-agent breakers. `isFailure` says which errors count against an agent. */
export function createCircuitBreakers(
  options: CircuitBreakerOptions,
  isFailure: (error: Error) => boolean,
  onStateChange?: (agentId: string, state: CircuitStateName) => void,
): CircuitBreakers {
  const breakers = new Map<string, CircuitBreakerPolicy>();
  const name = (s: CircuitState): CircuitStateName =>
    s === CircuitState.Closed ? "closed" : s === CircuitState.HalfOpen ? "half-open" : "open";
  const get = (agentId: string): CircuitBreakerPolicy => {
    let b = breakers.get(agentId);
    if (!b) {
      b = circuitBreaker(handleWhen(isFailure), {
        halfOpenAfter: options.halfOpenAfterMs,
        breaker: new ConsecutiveBreaker(options.consecutiveFailures),
      });
      if (onStateChange) b.onStateChange((s) => onStateChange(agentId, name(s)));
      breakers.set(agentId, b);
    }
    return b;
  };
  return {
    get,
    isRoutable(agentId) {
      const b = breakers.get(agentId);
      if (!b || b.state === CircuitState.Closed) return true;
      if (b.state !== CircuitState.Open) return false;
      // cockatiel moves Open -> HalfOpen on the first execute after halfOpenAfter (it reads
      // Date.now()), and exposes when it opened only through toJSON().
      const { ownState } = b.toJSON() as { ownState: { openedAt?: number } };
      return Date.now() - (ownState.openedAt ?? 0) >= options.halfOpenAfterMs;
    },
    state: (agentId) => name(breakers.get(agentId)?.state ?? CircuitState.Closed),
    forget: (agentId) => {
      breakers.delete(agentId);
    },
  };
}
