/** State of one dependency: ok, degraded (serving with a fallback) or down (cannot serve). */
export type DependencyState = "ok" | "degraded" | "down";

/** One dependency's report. */
export interface DependencyStatus {
  name: string;
  state: DependencyState;
  /** Why it is not ok (names the resource, never a secret). */
  detail?: string;
}

/** The kernel's readiness: every dependency and the overall verdict. */
export interface ReadinessReport {
  ready: boolean;
  status: "ready" | "degraded" | "not_ready";
  dependencies: DependencyStatus[];
}
