import { availableParallelism } from "node:os";

/** Load figures as the kernel's Heartbeat takes them. */
export interface LoadFigures {
  inFlight: number;
  cpu: number;
  latencyP50Ms: number;
  latencyP99Ms: number;
  errorRate: number;
}

/** Counts in-flight calls and keeps a window of recent latencies and outcomes. */
export interface LoadTracker {
  begin(): void;
  end(latencyMs: number, failed: boolean): void;
  inFlight(): number;
  /** Figures since the last snapshot's window (latencies and errors of the last `window` calls). */
  snapshot(): LoadFigures;
}

/** Creates a tracker over the last `window` calls. */
export function createLoadTracker(window = 256): LoadTracker {
  const latencies: number[] = [];
  const failures: boolean[] = [];
  let active = 0;
  let lastCpu = process.cpuUsage();
  let lastAt = process.hrtime.bigint();
  const cores = availableParallelism();
  const pct = (sorted: number[], p: number) => sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))] ?? 0;
  return {
    begin: () => void active++,
    end(latencyMs, failed) {
      active--;
      latencies.push(latencyMs);
      failures.push(failed);
      if (latencies.length > window) latencies.shift();
      if (failures.length > window) failures.shift();
    },
    inFlight: () => active,
    snapshot() {
      const now = process.hrtime.bigint();
      const cpu = process.cpuUsage(lastCpu);
      const elapsedUs = Number(now - lastAt) / 1000;
      lastCpu = process.cpuUsage();
      lastAt = now;
      const used = elapsedUs > 0 ? (cpu.user + cpu.system) / elapsedUs / cores : 0;
      const sorted = [...latencies].sort((a, b) => a - b);
      const errors = failures.filter(Boolean).length;
      return {
        inFlight: active,
        cpu: Math.min(1, Math.max(0, used)),
        latencyP50Ms: pct(sorted, 0.5),
        latencyP99Ms: pct(sorted, 0.99),
        errorRate: failures.length ? errors / failures.length : 0,
      };
    },
  };
}
