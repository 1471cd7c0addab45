import { create } from "@bufbuild/protobuf";
import type { Meter } from "@opentelemetry/api";
import {
  DegradedModeActivatedSchema,
  DegradedModeRecoveredSchema,
} from "../../gen/nops/events/v1/degraded_events_pb.js";
import type { Clock, DependencyState, DependencyStatus, ReadinessReport, TimerHandle } from "../common/index.js";
import type { EventSink, KernelEvent } from "../store/index.js";
import type { Logger } from "../telemetry/index.js";
import type { CapabilitySpec, Criticality, StatusMatrixOptions } from "./status-matrix-options.js";

/** Probes one dependency; must be cheap and never block. Throwing counts as down. */
export type DependencyProbe = () => DependencyStatus;

/** How a capability is serving. */
export type CapabilityMode = "normal" | "degraded" | "blocked";

/** A dependency's last probe result and when it entered that state. */
export interface DependencyReport extends DependencyStatus {
  /** Epoch ms. */
  since: number;
}

/** A capability's mode under the matrix. */
export interface CapabilityReport {
  name: string;
  criticality: Criticality;
  mode: CapabilityMode;
  fallback: string;
  dependsOn: string[];
  /** The failing dependencies and their details; absent in normal mode. */
  reason?: string;
  /** Epoch ms when it entered this mode. */
  since: number;
}

/** /readyz and AdminService.GetStatus: a ReadinessReport plus every capability's mode. */
export interface StatusReport extends ReadinessReport {
  dependencies: DependencyReport[];
  capabilities: CapabilityReport[];
  /** Epoch ms. */
  checkedAt: number;
}

/** What the status matrix needs. */
export interface StatusMatrixDeps {
  /** Probes by dependency name (sqlite, nats-leaf, hub-link, redis, dge, workload-api, …); configured ones only. */
  probes: Record<string, DependencyProbe>;
  /** Where degraded.mode.* events go (the SQLite outbox). */
  events: EventSink;
  clock: Clock;
  logger: Logger;
  meter: Meter;
}

/** Computes capability modes from dependency probes, reports transitions, answers readiness. */
export interface StatusMatrix {
  /** Probes every dependency now, updates modes, emits transition events; the report. */
  evaluate(): StatusReport;
  /** The last report, probing first if there is none. */
  current(): StatusReport;
  /** Re-evaluates every options.intervalMs. */
  start(): void;
  stop(): void;
}

const MODE_VALUE: Record<CapabilityMode, number> = { normal: 0, degraded: 1, blocked: 2 };
const STATE_VALUE: Record<DependencyState, number> = { ok: 0, degraded: 1, down: 2 };

/**
 * A capability's mode: normal while every dependency it relies on is ok; a CRITICAL one is
 * blocked when one is down (it has no fallback: fail closed); otherwise degraded (on its fallback).
 */
export function capabilityMode(spec: CapabilitySpec, failing: readonly DependencyStatus[]): CapabilityMode {
  if (failing.length === 0) return "normal";
  return spec.criticality === "CRITICAL" && failing.some((d) => d.state === "down") ? "blocked" : "degraded";
}

/** Creates the status matrix. */
export function createStatusMatrix(deps: StatusMatrixDeps, options: StatusMatrixOptions): StatusMatrix {
  const log = deps.logger.child({ component: "status-matrix" });
  const depSince = new Map<string, { state: DependencyState; since: number }>();
  const capState = new Map<string, { mode: CapabilityMode; since: number; failing: string[] }>();
  // Events that could not be written (SQLite itself may be what is down): retried on the next evaluation.
  const unwritten: KernelEvent[] = [];
  let last: StatusReport | undefined;
  let timer: TimerHandle | undefined;

  deps.meter
    .createObservableGauge("nops_capability_mode", {
      description: "Capability mode under the criticality matrix: 0 normal, 1 degraded, 2 blocked",
    })
    .addCallback((r) => {
      for (const c of last?.capabilities ?? [])
        r.observe(MODE_VALUE[c.mode], { capability: c.name, criticality: c.criticality });
    });
  deps.meter
    .createObservableGauge("nops_dependency_state", {
      description: "Dependency state from its last probe: 0 ok, 1 degraded, 2 down",
    })
    .addCallback((r) => {
      for (const d of last?.dependencies ?? []) r.observe(STATE_VALUE[d.state], { dependency: d.name });
    });

  const flushEvents = (): void => {
    while (unwritten.length) {
      try {
        deps.events.append(unwritten[0]!);
        unwritten.shift();
      } catch (err) {
        log.warn(
          { err, pending: unwritten.length },
          "degraded-mode event not recorded yet; retrying on the next evaluation",
        );
        return;
      }
    }
  };

  const probe = (name: string, fn: DependencyProbe): DependencyStatus => {
    try {
      const s = fn();
      return { name, state: s.state, ...(s.detail ? { detail: s.detail } : {}) };
    } catch (err) {
      return { name, state: "down", detail: `probe failed: ${err instanceof Error ? err.message : String(err)}` };
    }
  };

  function evaluate(): StatusReport {
    const now = deps.clock.now();
    const dependencies: DependencyReport[] = Object.entries(deps.probes).map(([name, fn]) => {
      const s = probe(name, fn);
      const prev = depSince.get(name);
      if (prev?.state !== s.state) {
        depSince.set(name, { state: s.state, since: now });
        if (prev)
          log.info({ dependency: name, from: prev.state, to: s.state, detail: s.detail }, "dependency state changed");
      }
      return { ...s, since: depSince.get(name)!.since };
    });
    const byName = new Map(dependencies.map((d) => [d.name, d]));

    const capabilities: CapabilityReport[] = Object.entries(options.capabilities).map(([name, spec]) => {
      const failing = spec.dependsOn
        .map((d) => byName.get(d))
        .filter((d): d is DependencyReport => d !== undefined && d.state !== "ok");
      const mode = capabilityMode(spec, failing);
      const reason = failing.map((d) => `${d.name} ${d.state}${d.detail ? `: ${d.detail}` : ""}`).join("; ");
      const prev = capState.get(name) ?? { mode: "normal" as const, since: now, failing: [] };
      if (prev.mode !== mode) {
        transition(
          name,
          spec,
          prev,
          mode,
          failing.map((d) => d.name),
          reason,
        );
        capState.set(name, { mode, since: now, failing: failing.map((d) => d.name) });
      } else if (!capState.has(name)) capState.set(name, prev);
      const state = capState.get(name)!;
      return {
        name,
        criticality: spec.criticality,
        mode,
        fallback: spec.fallback,
        dependsOn: [...spec.dependsOn],
        ...(reason ? { reason } : {}),
        since: state.since,
      };
    });
    flushEvents();

    const gating = capabilities.some((c) => c.mode === "blocked" && options.capabilities[c.name]?.gatesReadiness);
    const degraded = capabilities.some((c) => c.mode !== "normal");
    last = {
      ready: !gating,
      status: gating ? "not_ready" : degraded ? "degraded" : "ready",
      dependencies,
      capabilities,
      checkedAt: now,
    };
    return last;
  }

  function transition(
    name: string,
    spec: CapabilitySpec,
    prev: { mode: CapabilityMode; failing: string[] },
    mode: CapabilityMode,
    failing: string[],
    reason: string,
  ): void {
    const level = mode === "blocked" ? "error" : mode === "degraded" ? "warn" : "info";
    log[level](
      {
        capability: name,
        criticality: spec.criticality,
        from: prev.mode,
        to: mode,
        reason,
        fallback: mode === "degraded" ? spec.fallback : undefined,
      },
      "capability mode changed",
    );
    if (!spec.events) return;
    const modeName = (m: CapabilityMode) => (m === "blocked" ? "blocked" : spec.fallback);
    if (mode === "normal") {
      const payload = create(DegradedModeRecoveredSchema, {
        capability: name,
        dependency: prev.failing.join(","),
        mode: modeName(prev.mode),
        reason: "dependencies ok",
      });
      unwritten.push({
        type: "degraded.mode.recovered.v1",
        tenant: options.systemTenant,
        schema: DegradedModeRecoveredSchema,
        payload,
      });
    } else {
      // degraded -> blocked (or back) is a new mode in effect: reported as a new activation.
      const payload = create(DegradedModeActivatedSchema, {
        capability: name,
        dependency: failing.join(","),
        mode: modeName(mode),
        reason,
      });
      unwritten.push({
        type: "degraded.mode.activated.v1",
        tenant: options.systemTenant,
        schema: DegradedModeActivatedSchema,
        payload,
      });
    }
  }

  return {
    evaluate,
    current: () => last ?? evaluate(),
    start() {
      if (timer) return;
      evaluate();
      timer = deps.clock.setInterval(() => {
        try {
          evaluate();
        } catch (err) {
          log.error({ err }, "status evaluation failed");
        }
      }, options.intervalMs);
      timer.unref();
    },
    stop() {
      deps.clock.clearInterval(timer);
      timer = undefined;
    },
  };
}
