import type { Clock } from "../common/index.js";

/** What the kernel has observed about one agent from its own calls. */
export interface AgentStats {
  /** EWMA of successful call latency, ms; undefined before the first success. */
  latencyMs: number | undefined;
  /** EWMA of failures (1) and successes (0). */
  errorRate: number;
  /** Calls from this kernel currently in flight to the agent. */
  inFlight: number;
}

/** Observes calls to agents and keeps their EWMAs. */
export interface AgentStatsTracker {
  /** Marks a call started; the returned function records how it ended. */
  /** `latencyMs` undefined: the outcome counts, its duration does not (e.g. it included a connection handshake). */
  begin(agentId: string): (outcome: { ok: boolean; latencyMs: number | undefined }) => void;
  /** The agent's stats with the EWMAs decayed to now. */
  get(agentId: string): AgentStats | undefined;
  forget(agentId: string): void;
}

/** Options of the tracker (see ScoringOptions). */
export interface AgentStatsOptions {
  ewmaAlpha: number;
  decayMs: number;
}

interface Entry extends AgentStats {
  /** When the EWMAs were last brought up to date. */
  at: number;
}

/**
 * Creates a tracker. Besides the per-sample EWMA, both averages fade with time constant
 * `decayMs` while an agent gets no samples (like Finagle's peak EWMA): an agent that lost the
 * power-of-two comparison because of one slow call or a burst of errors is tried again later
 * instead of starving forever.
 */
export function createAgentStatsTracker(clock: Clock, options: AgentStatsOptions): AgentStatsTracker {
  const stats = new Map<string, Entry>();
  const alpha = options.ewmaAlpha;
  const decay = (e: Entry): void => {
    const now = clock.now();
    const f = Math.exp(-Math.max(0, now - e.at) / options.decayMs);
    if (e.latencyMs !== undefined) e.latencyMs *= f;
    e.errorRate *= f;
    e.at = now;
  };
  return {
    begin(agentId) {
      let entry = stats.get(agentId);
      if (!entry) {
        entry = { latencyMs: undefined, errorRate: 0, inFlight: 0, at: clock.now() };
        stats.set(agentId, entry);
      }
      const e = entry;
      e.inFlight++;
      let done = false;
      return ({ ok, latencyMs }) => {
        if (done) return;
        done = true;
        e.inFlight--;
        decay(e);
        e.errorRate = e.errorRate * (1 - alpha) + (ok ? 0 : alpha);
        // Failures are often fast (connection refused); counting their latency would make a
        // broken agent look attractive, so only successes feed the latency EWMA.
        if (ok && latencyMs !== undefined)
          e.latencyMs = e.latencyMs === undefined ? latencyMs : e.latencyMs * (1 - alpha) + latencyMs * alpha;
      };
    },
    get(agentId) {
      const e = stats.get(agentId);
      if (!e) return undefined;
      decay(e);
      return { latencyMs: e.latencyMs, errorRate: e.errorRate, inFlight: e.inFlight };
    },
    forget: (agentId) => {
      stats.delete(agentId);
    },
  };
}
