import type { Agent } from "../../gen/nops/kernel/v1/agent_registry_pb.js";
import { RouteMode } from "../../gen/nops/kernel/v1/routing_pb.js";
import type { Clock } from "../common/index.js";
import type { AgentStatsTracker } from "./agent-stats.js";
import type { CircuitBreakers } from "./circuit-breakers.js";
import { healthScore } from "./health-score.js";
import type { RoutableAgents } from "./routable-agents.js";
import type { RoutingOptions, StaticRoute } from "./routing-options.js";

/** What narrows the candidates of one pick. */
export interface SelectionConstraints {
  labels?: Record<string, string>;
  capabilityVersion?: string;
  excludeAgentIds?: readonly string[];
}

/** The chosen agent and why. */
export interface Selection {
  agent: Agent;
  mode: RouteMode;
  reason: string;
  score: number;
  weight: number;
  candidates: number;
  fallback: boolean;
}

/** Picks one live agent for a capability. */
export interface AgentSelector {
  /**
   * Picks an agent, or undefined when none is routable. `avoid` lists agents already tried by
   * this request: they are skipped unless nothing else is left.
   */
  select(
    tenant: string,
    capability: string,
    constraints: SelectionConstraints,
    avoid?: ReadonlySet<string>,
  ): Selection | undefined;
}

/** Dependencies of the selector. */
export interface AgentSelectorDeps {
  agents: RoutableAgents;
  stats: AgentStatsTracker;
  breakers: CircuitBreakers;
  clock: Clock;
  /** Uniform random in [0, 1); tests pass a seeded one. @default Math.random */
  random?: () => number;
  /** Told about every endpoint listed, so the channel pool keeps it. */
  onListed?: (agents: readonly Agent[]) => void;
  /** Agents never to pick (their endpoint failed its identity check). */
  isBarred?: (agent: Agent) => boolean;
}

interface Weighted {
  agent: Agent;
  weight: number;
}

const matches = (agent: Agent, ref: string): boolean => agent.id === ref || agent.name === ref;

/** Creates the selector: weighted P2C on health scores, weighted round-robin when scores are missing. */
export function createAgentSelector(deps: AgentSelectorDeps, options: RoutingOptions): AgentSelector {
  const random = deps.random ?? Math.random;
  // Smooth weighted round-robin state (as in nginx) per tenant/capability, for degraded mode.
  const rrState = new Map<string, Map<string, number>>();

  const routeFor = (tenant: string, capability: string): StaticRoute | undefined =>
    options.routes.find((r) => r.capability === capability && (r.tenants.length === 0 || r.tenants.includes(tenant)));

  function weigh(route: StaticRoute | undefined, live: Agent[]): { set: Weighted[]; fallback: boolean } {
    if (!route) return { set: live.map((agent) => ({ agent, weight: 1 })), fallback: false };
    const primary: Weighted[] = [];
    for (const agent of live) {
      const target = route.targets.find((t) => matches(agent, t.agent));
      if (target) primary.push({ agent, weight: target.weight });
    }
    if (primary.length > 0) return { set: primary, fallback: false };
    const fallbacks = live.filter((a) => route.fallbacks.some((f) => matches(a, f)));
    if (fallbacks.length > 0) return { set: fallbacks.map((agent) => ({ agent, weight: 1 })), fallback: true };
    if (route.strict) return { set: [], fallback: true };
    return { set: live.map((agent) => ({ agent, weight: 1 })), fallback: true };
  }

  function sample(set: Weighted[]): Weighted {
    const total = set.reduce((s, w) => s + w.weight, 0);
    let r = random() * total;
    for (const w of set) {
      r -= w.weight;
      if (r < 0) return w;
    }
    return set[set.length - 1]!;
  }

  function roundRobin(key: string, set: Weighted[]): Weighted {
    let state = rrState.get(key);
    if (!state) {
      state = new Map();
      rrState.set(key, state);
    }
    const ids = new Set(set.map((w) => w.agent.id));
    for (const id of state.keys()) if (!ids.has(id)) state.delete(id);
    const total = set.reduce((s, w) => s + w.weight, 0);
    let best: Weighted | undefined;
    let bestCurrent = -Infinity;
    for (const w of set) {
      const current = (state.get(w.agent.id) ?? 0) + w.weight;
      state.set(w.agent.id, current);
      if (current > bestCurrent) {
        best = w;
        bestCurrent = current;
      }
    }
    const chosen = best!;
    state.set(chosen.agent.id, bestCurrent - total);
    return chosen;
  }

  return {
    select(tenant, capability, constraints, avoid) {
      const listed = deps.agents.listRoutable(tenant, capability);
      deps.onListed?.(listed);
      const excluded = new Set(constraints.excludeAgentIds ?? []);
      const live = listed.filter((a) => {
        if (excluded.has(a.id) || !deps.breakers.isRoutable(a.id) || deps.isBarred?.(a)) return false;
        const cap = a.capabilities.find((c) => c.name === capability);
        if (!cap) return false;
        if (constraints.capabilityVersion && !cap.version.startsWith(constraints.capabilityVersion)) return false;
        for (const [k, v] of Object.entries(constraints.labels ?? {})) if (a.labels[k] !== v) return false;
        return true;
      });
      const { set: weighted, fallback } = weigh(routeFor(tenant, capability), live);
      const fresh = avoid && avoid.size > 0 ? weighted.filter((w) => !avoid.has(w.agent.id)) : weighted;
      const set = fresh.length > 0 ? fresh : weighted;
      if (set.length === 0) return undefined;
      const base = { candidates: set.length, fallback };
      if (set.length === 1) {
        const only = set[0]!;
        const score = healthScore(only.agent, deps.stats.get(only.agent.id), deps.clock.now(), options.scoring) ?? 0;
        return {
          ...base,
          agent: only.agent,
          weight: only.weight,
          score,
          mode: RouteMode.SCORED,
          reason: `only candidate: ${only.agent.name}`,
        };
      }
      const now = deps.clock.now();
      const scores = new Map<string, number | undefined>();
      for (const w of set)
        scores.set(w.agent.id, healthScore(w.agent, deps.stats.get(w.agent.id), now, options.scoring));
      if ([...scores.values()].some((s) => s === undefined)) {
        const chosen = roundRobin(`${tenant}\u0000${capability}`, set);
        return {
          ...base,
          agent: chosen.agent,
          weight: chosen.weight,
          score: 0,
          mode: RouteMode.ROUND_ROBIN,
          reason: `round-robin (degraded: no latency data yet): ${chosen.agent.name}`,
        };
      }
      // Two distinct candidates, each drawn in proportion to its weight.
      const a = sample(set);
      const b = sample(set.filter((w) => w !== a));
      const sa = scores.get(a.agent.id)!;
      const sb = scores.get(b.agent.id)!;
      const pick = (w: Weighted, why: string): Selection => ({
        ...base,
        agent: w.agent,
        weight: w.weight,
        score: scores.get(w.agent.id)!,
        mode: RouteMode.SCORED,
        reason: why,
      });
      if (random() < options.scoring.exploreRatio)
        return pick(a, `p2c: exploring ${a.agent.name} (score ${sa.toFixed(3)})`);
      // Near-equal scores: a toss weighted like the pair's weights, so healthy agents share
      // traffic by weight (exactly for two candidates, approximately for more).
      if (Math.abs(sa - sb) <= options.scoring.tieTolerance * Math.max(sa, sb)) {
        const w = random() * (a.weight + b.weight) < a.weight ? a : b;
        return pick(
          w,
          `p2c: ${a.agent.name} (${sa.toFixed(3)}) ~ ${b.agent.name} (${sb.toFixed(3)}), tie broken by weight`,
        );
      }
      const [win, lose, sw, sl] = sa > sb ? [a, b, sa, sb] : [b, a, sb, sa];
      return pick(
        win,
        `p2c: ${win.agent.name} (score ${sw.toFixed(3)}) over ${lose.agent.name} (score ${sl.toFixed(3)})`,
      );
    },
  };
}
