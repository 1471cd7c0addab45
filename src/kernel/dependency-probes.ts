import type { Clock } from "../common/clock.js";
import type { Db } from "../store/database.js";
import { checkSqliteWritable } from "../store/sqlite-readiness.js";
import type { EventBus } from "../events/event-bus.js";
import type { X509Source } from "../identity/spiffe/index.js";
import type { WorkloadApiLiveness } from "../identity/spiffe/workload-api-client.js";
import type { KernelRedis } from "../store/redis-client.js";
import type { DependencyProbe } from "../admin/status-matrix.js";
import { statusProbe } from "../admin/dependency-probes.js";

/** What the probe rules look at. */
export interface ProbeSources {
  clock: Clock;
  db: Db;
  databasePath: string;
  bus: EventBus;
  /** The leaf the relay publishes to; "" when there is none. */
  natsUrl: string;
  /** True when a hub sources the edge stream (nats.url or nats.hubUrl set). */
  hubBound: boolean;
  redis?: KernelRedis;
}

/** One probe per configured dependency; the status matrix turns them into capability modes. */
export function dependencyProbes(s: ProbeSources): Record<string, DependencyProbe> {
  const busProblem = (dependency: string) => s.bus.degradations().find((d) => d.dependency === dependency);
  const probes: Record<string, DependencyProbe> = {
    sqlite: () => checkSqliteWritable(s.db, s.databasePath),
    "nats-leaf": () => {
      if (!s.natsUrl)
        return { name: "nats-leaf", state: "down", detail: "no NATS leaf configured: events are kept in the outbox" };
      const p = busProblem("nats") ?? busProblem("nats-stream");
      if (p) return { name: "nats-leaf", state: p.dependency === "nats" ? "down" : "degraded", detail: p.reason };
      // The bus records a degradation only after its first attempt settles (a normal start emits
      // no degraded event), so ask it directly whether it is connected yet.
      return s.bus.connection()
        ? { name: "nats-leaf", state: "ok" }
        : { name: "nats-leaf", state: "down", detail: `connecting to ${s.natsUrl}` };
    },
  };
  if (s.hubBound) {
    probes["hub-link"] = () => {
      const p = busProblem("hub");
      return p ? { name: "hub-link", state: "down", detail: p.reason } : { name: "hub-link", state: "ok" };
    };
  }
  if (s.redis) probes.redis = statusProbe(s.redis);
  return probes;
}

/**
 * The Workload API's probe: the SVID stream's own state, and while it says connected, whether
 * the agent still answers (a hung agent keeps its stream open). An unreachable agent is degraded
 * while the current SVID is valid, down once it expires.
 */
export function workloadApiProbe(clock: Clock, x509: X509Source, liveness: WorkloadApiLiveness): DependencyProbe {
  return () => {
    const stream = x509.connection?.() ?? { connected: true };
    const conn = stream.connected ? liveness.connection() : stream;
    if (conn.connected) return { name: "workload-api", state: "ok" };
    const notAfter = x509.current()?.svid.notAfter ?? 0;
    const detail = conn.detail ?? "unreachable";
    return notAfter > clock.now()
      ? {
          name: "workload-api",
          state: "degraded",
          detail: `${detail}; SVID valid until ${new Date(notAfter).toISOString()}`,
        }
      : { name: "workload-api", state: "down", detail: `${detail}; SVID expired` };
  };
}
