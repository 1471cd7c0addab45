/** State of one dependency: ok, degraded (serving with a fallback) or down (cannot serve). */
export type DependencyState = "ok" | "degraded" | "down";

/** One dependency's report. */
export interface DependencyStatus {
  name: string;
  state: DependencyState;
  /** Why it is not ok (names the resource, never a secret). */
  detail?: string;
}

/** A readiness check; must be cheap and never throw. */
export type ReadinessCheck = () => DependencyStatus;

/** The kernel's readiness: every dependency and the overall verdict. */
export interface ReadinessReport {
  ready: boolean;
  status: "ready" | "degraded" | "not_ready";
  dependencies: DependencyStatus[];
}

/** Runs every check: not ready when any dependency is down, degraded when any is degraded. */
export function evaluateReadiness(checks: readonly ReadinessCheck[]): ReadinessReport {
  const dependencies = checks.map((check) => {
    try {
      return check();
    } catch (e) {
      return { name: "readiness", state: "down" as const, detail: `check failed: ${(e as Error).message}` };
    }
  });
  const down = dependencies.some((d) => d.state === "down");
  const degraded = dependencies.some((d) => d.state === "degraded");
  return { ready: !down, status: down ? "not_ready" : degraded ? "degraded" : "ready", dependencies };
}
