import type { DependencyBreakerOptions } from "../common/dependency-breaker.js";
import { readSection } from "../common/index.js";
import { resolveDgeBreakerOptions } from "../clients/dge-client.js";
import { resolveNatsBreakerOptions } from "../events/event-bus.js";
import { resolveWorkloadApiBreakerOptions } from "../identity/spiffe/workload-api-client.js";
import { resolveMemoryTrimOptions, type MemoryTrimOptions } from "../server/memory-trim.js";
import { resolveOverloadOptions, type OverloadOptions } from "../server/overload-guard.js";
import { resolveRedisBreakerOptions } from "../store/redis-client.js";
import { resolveStatusMatrixOptions, type StatusMatrixOptions } from "../admin/status-matrix-options.js";

/** Call budget and breaker of each remote dependency (see docs/observability.md, "Hung dependencies"). */
export interface DependencyBudgets {
  /** Every Redis command. @default DEFAULT_REDIS_BREAKER (100 ms budget) */
  redis: DependencyBreakerOptions;
  /** Every DGE call. @default DEFAULT_DGE_BREAKER (1 s budget) */
  dge: DependencyBreakerOptions;
  /** The NATS leaf's PING round trip. @default DEFAULT_NATS_BREAKER (500 ms budget) */
  nats: DependencyBreakerOptions;
  /** The Workload API liveness check. @default DEFAULT_WORKLOAD_API_BREAKER (2 s budget) */
  workloadApi: DependencyBreakerOptions;
}

/** The `admin` config section. */
export interface AdminOptions {
  /** Criticality matrix: capabilities, their dependencies and fallbacks. */
  status: StatusMatrixOptions;
  /** Load shedding on event-loop delay, heap and descriptor watermarks. */
  overload: OverloadOptions;
  /** Returning V8's freed heap to the OS once the kernel goes quiet after a burst. */
  memoryTrim: MemoryTrimOptions;
  /** Budgets and breakers of Redis, the DGE, NATS and the Workload API. */
  dependencies: DependencyBudgets;
}

/** Validates the `admin` section and fills defaults; throws ConfigError naming the field. */
export function resolveAdminOptions(input: unknown = {}, path = "admin"): AdminOptions {
  const s = readSection(input, path, { status: {}, overload: {}, memoryTrim: {}, dependencies: {} });
  const deps = readSection(s.dependencies, `${path}.dependencies`, { redis: {}, dge: {}, nats: {}, workloadApi: {} });
  return {
    status: resolveStatusMatrixOptions(s.status ?? {}, `${path}.status`),
    overload: resolveOverloadOptions(s.overload ?? {}, `${path}.overload`),
    memoryTrim: resolveMemoryTrimOptions(s.memoryTrim ?? {}, `${path}.memoryTrim`),
    dependencies: {
      redis: resolveRedisBreakerOptions(deps.redis, `${path}.dependencies.redis`),
      dge: resolveDgeBreakerOptions(deps.dge, `${path}.dependencies.dge`),
      nats: resolveNatsBreakerOptions(deps.nats, `${path}.dependencies.nats`),
      workloadApi: resolveWorkloadApiBreakerOptions(deps.workloadApi, `${path}.dependencies.workloadApi`),
    },
  };
}
