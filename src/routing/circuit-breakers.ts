import { BrokenCircuitError } from "cockatiel";
import type { Clock } from "../common/index.js";
import type { CircuitBreakerOptions } from "./routing-options.js";

/** State of one agent's circuit as the router reports it. */
export type CircuitStateName = "closed" | "open" | "half-open";

/** One agent's circuit. */
export interface AgentCircuit {
  /**
   * Runs `fn` unless the circuit is open (then throws cockatiel's BrokenCircuitError). While a
   * half-open probe is in flight, other calls wait for its outcome, then try again.
   */
  execute<T>(fn: () => Promise<T>): Promise<T>;
  readonly state: CircuitStateName;
}

/** One circuit breaker per agent, keyed by agent id. */
export interface CircuitBreakers {
  /** The agent's breaker, created closed on first use. */
  get(agentId: string): AgentCircuit;
  /**
   * False while the circuit is open and not yet due for a probe, or while the half-open probe is
   * in flight: the router must not pick the agent then.
   */
  isRoutable(agentId: string): boolean;
  state(agentId: string): CircuitStateName;
  forget(agentId: string): void;
}

/** What the breakers need. */
export interface CircuitBreakersDeps {
  /** Open circuits wait on this clock, so tests half-open them by advancing it. */
  clock: Clock;
  /** Which errors count against an agent; others pass through and, from a probe, close the circuit. */
  isFailure: (error: Error) => boolean;
  onStateChange?: (agentId: string, state: CircuitStateName) => void;
}

/**
 * Creates the per-agent breakers: consecutive-failure breakers with one half-open probe, with
 * cockatiel's semantics (ConsecutiveBreaker, constant halfOpenAfter) but timed by the injected
 * clock, which cockatiel's breaker cannot take (it reads Date.now()).
 */
export function createCircuitBreakers(
  deps: CircuitBreakersDeps,
  options: Pick<CircuitBreakerOptions, "consecutiveFailures" | "halfOpenAfterMs">,
): CircuitBreakers {
  const { clock, isFailure } = deps;
  const breakers = new Map<string, Circuit>();

  class Circuit implements AgentCircuit {
    state: CircuitStateName = "closed";
    openedAt = 0;
    failures = 0;
    probe: Promise<unknown> | undefined;
    constructor(readonly agentId: string) {}

    private move(state: CircuitStateName): void {
      this.state = state;
      if (state === "open") this.openedAt = clock.now();
      if (state !== "half-open") this.probe = undefined;
      if (state === "closed") this.failures = 0;
      deps.onStateChange?.(this.agentId, state);
    }

    dueForProbe(): boolean {
      return clock.now() - this.openedAt >= options.halfOpenAfterMs;
    }

    async execute<T>(fn: () => Promise<T>): Promise<T> {
      switch (this.state) {
        case "closed":
          try {
            const value = await fn();
            this.failures = 0;
            return value;
          } catch (err) {
            if (err instanceof Error && isFailure(err) && ++this.failures >= options.consecutiveFailures)
              this.move("open");
            throw err;
          }
        case "half-open":
          await this.probe?.catch(() => undefined);
          return this.execute(fn);
        case "open": {
          if (!this.dueForProbe()) throw new BrokenCircuitError();
          const probe = this.runProbe(fn);
          this.probe = probe;
          this.move("half-open");
          return probe;
        }
      }
    }

    private async runProbe<T>(fn: () => Promise<T>): Promise<T> {
      // Let move("half-open") run first, as a probe's outcome must follow its start.
      await Promise.resolve();
      try {
        const value = await fn();
        this.move("closed");
        return value;
      } catch (err) {
        // An error that says nothing about the agent leaves it closed (as cockatiel does).
        this.move(err instanceof Error && isFailure(err) ? "open" : "closed");
        throw err;
      }
    }
  }

  return {
    get(agentId) {
      let b = breakers.get(agentId);
      if (!b) {
        b = new Circuit(agentId);
        breakers.set(agentId, b);
      }
      return b;
    },
    isRoutable(agentId) {
      const b = breakers.get(agentId);
      if (!b || b.state === "closed") return true;
      return b.state === "open" && b.dueForProbe();
    },
    state: (agentId) => breakers.get(agentId)?.state ?? "closed",
    forget: (agentId) => {
      breakers.delete(agentId);
    },
  };
}
