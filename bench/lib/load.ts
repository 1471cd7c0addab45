/** Result of one load run. */
export interface LoadResult {
  name: string;
  requests: number;
  errors: number;
  rps: number;
  p50Ms: number;
  p99Ms: number;
}

/** Options for a closed-loop load run: `concurrency` calls always in flight. */
export interface LoadOptions {
  name: string;
  concurrency: number;
  warmupMs: number;
  durationMs: number;
  /** One call; `worker` is the index of the in-flight slot (pick a connection with it). */
  call: (worker: number) => Promise<void>;
  /** Called when the measured window starts (after the warm-up), e.g. to sample CPU time. */
  onMeasuring?: () => void;
}

/** The p-th percentile of ascending `sorted` (nearest rank below), NaN when empty. */
export function percentile(sorted: Float64Array, p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

/** Runs `concurrency` loops calling `call` back to back; measures after the warm-up. */
export async function runLoad(options: LoadOptions): Promise<LoadResult> {
  const latencies: number[] = [];
  let errors = 0;
  let measuring = false;
  let stop = false;
  const worker = async (i: number) => {
    while (!stop) {
      const start = performance.now();
      try {
        await options.call(i);
        if (measuring) latencies.push(performance.now() - start);
      } catch {
        if (measuring) errors++;
      }
    }
  };
  const workers = Array.from({ length: options.concurrency }, (_, i) => worker(i));
  await new Promise((r) => setTimeout(r, options.warmupMs));
  measuring = true;
  options.onMeasuring?.();
  const began = performance.now();
  await new Promise((r) => setTimeout(r, options.durationMs));
  measuring = false;
  const elapsed = (performance.now() - began) / 1000;
  stop = true;
  await Promise.all(workers);
  const sorted = Float64Array.from(latencies).sort();
  return {
    name: options.name,
    requests: latencies.length,
    errors,
    rps: latencies.length / elapsed,
    p50Ms: percentile(sorted, 50),
    p99Ms: percentile(sorted, 99),
  };
}

/** Formats a result line with its ratio to a baseline and, when given, whether it meets the target ratio. */
export function formatResult(r: LoadResult, baseline?: LoadResult, target?: number): string {
  const ratio = baseline ? r.rps / baseline.rps : 1;
  const verdict =
    target === undefined ? "" : ratio >= target ? `  (target >= ${target}: met)` : `  (target >= ${target}: MISSED)`;
  const of = baseline ? `  ratio ${ratio.toFixed(2)} of ${baseline.name}${verdict}` : "  (baseline)";
  return (
    `${r.name.padEnd(44)} ${r.rps.toFixed(0).padStart(7)} req/s  p50 ${r.p50Ms.toFixed(2)} ms` +
    `  p99 ${r.p99Ms.toFixed(2)} ms  errors ${r.errors}${of}`
  );
}
