import { AgentStatus, type Agent } from "../../gen/nops/kernel/v1/agent_registry_pb.js";
import type { AgentStats } from "./agent-stats.js";
import type { ScoringOptions } from "./routing-options.js";

/**
 * Health score of an agent in (0, 1]; higher is better. Undefined when there is no latency data
 * at all (neither observed by this kernel nor reported by heartbeat): the router then falls
 * back to round-robin (degraded mode).
 *
 * score = floor / ((latency + floor) × (1 + inFlight) × (1 + penalty × errorRate)) × freshness
 */
export function healthScore(
  agent: Agent,
  stats: AgentStats | undefined,
  nowMs: number,
  options: ScoringOptions,
): number | undefined {
  const reported = agent.load;
  const latency = stats?.latencyMs ?? (reported && reported.latencyP50Ms > 0 ? reported.latencyP50Ms : undefined);
  if (latency === undefined) return undefined;
  const inFlight = Math.max(stats?.inFlight ?? 0, reported?.inFlight ?? 0);
  const errorRate = Math.min(1, Math.max(stats?.errorRate ?? 0, reported?.errorRate ?? 0));
  let freshness = 1;
  if (agent.heartbeatAt) {
    const beatMs = Number(agent.heartbeatAt.seconds) * 1000 + Math.floor(agent.heartbeatAt.nanos / 1e6);
    const age = nowMs - beatMs;
    if (age > options.heartbeatFreshMs) freshness = Math.max(0.05, options.heartbeatFreshMs / age);
  }
  if (agent.status === AgentStatus.STALE) freshness *= options.stalePenalty;
  const cost = (latency + options.latencyFloorMs) * (1 + inFlight) * (1 + options.errorPenalty * errorRate);
  return (options.latencyFloorMs / cost) * freshness;
}
