import type { ChildProcess } from "node:child_process";
import { createInterface } from "node:readline";
import { DEFAULT_MEMORY_TRIM_OPTIONS } from "../../src/server/memory-trim.js";
import { rssMiB } from "./h2load.js";

/** Longest wait for a trim the kernel is due to run: its quiet window, with room for a backlog to drain. */
const TRIM_WAIT_MS = 60_000;

/** The kernel's RSS as the benches report it, read once the kernel has run its memory trims. */
export interface KernelMemory {
  /** RSS of the started kernel once it has gone quiet and trimmed what starting left, MiB. */
  idle(): Promise<number>;
  /** The RSS line: idle, right after the bench, and after the trim that load makes due. */
  afterLoad(idleMiB: number): Promise<string>;
}

/**
 * Watches a kernel's log (its stdout, at level info) for its memory trims (src/server/memory-trim.ts logs
 * each with rssAfterMiB), so a bench reads the RSS after a trim rather than after a guessed sleep: after
 * heavy load the kernel may stay busy (outbox, audit) past any fixed wait. The line names the kernel's
 * allocator (kernelLaunch).
 */
export function watchKernelMemory(kernel: ChildProcess, allocator: string): KernelMemory {
  const pid = kernel.pid!;
  let trims = 0;
  const waiting = new Set<() => void>();
  createInterface({ input: kernel.stdout! }).on("line", (line) => {
    if (!line.includes('"rssAfterMiB":')) return;
    trims++;
    for (const wake of waiting) wake();
  });
  // Resolves true once more than `seen` trims have run, false after TRIM_WAIT_MS.
  const trimPast = (seen: number) =>
    new Promise<boolean>((resolve) => {
      if (trims > seen) return resolve(true);
      const done = (ok: boolean) => {
        clearTimeout(timer);
        waiting.delete(wake);
        resolve(ok);
      };
      const wake = () => trims > seen && done(true);
      const timer = setTimeout(() => done(false), TRIM_WAIT_MS);
      waiting.add(wake);
    });
  // Under a CPU profiler (NOPS_BENCH_PROFILE) the kernel is never quiet enough to trim: say so, not fail.
  let idleUntrimmed = false;
  return {
    async idle() {
      // Starting counts as growth, so the first quiet window after the start trims.
      idleUntrimmed = !(await trimPast(0));
      return rssMiB(pid);
    },
    async afterLoad(idleMiB) {
      const seen = trims;
      const after = rssMiB(pid);
      const idle = `${idleMiB.toFixed(0)} MiB${idleUntrimmed ? " (no trim)" : ""}`;
      const line = `kernel RSS: idle ${idle}, after the bench ${after.toFixed(0)} MiB`;
      // The kernel trims only what grew past minGrowthMiB since its last trim (at idle).
      if (after - idleMiB < DEFAULT_MEMORY_TRIM_OPTIONS.minGrowthMiB)
        return `${line}, after its idle trim (none due) ${after.toFixed(0)} MiB; ${allocator}`;
      const trimmed = await trimPast(seen);
      const wait = trimmed ? "" : `(none within ${TRIM_WAIT_MS / 1000} s) `;
      return `${line}, after its idle trim ${wait}${rssMiB(pid).toFixed(0)} MiB; ${allocator}`;
    },
  };
}
