import type { ChildProcess } from "node:child_process";
import { EventEmitter, once } from "node:events";
import { readFileSync } from "node:fs";
import { createInterface } from "node:readline";
import { DEFAULT_MEMORY_TRIM_OPTIONS } from "../../src/server/memory-trim.js";
import { rssMiB } from "./h2load.js";

/** Longest wait for a trim the kernel is due to run: its quiet window, with room for a backlog to drain. */
const TRIM_WAIT_MS = 60_000;

/** The kernel's RSS as the benches report it, read once the kernel has run its memory trims. */
export interface KernelMemory {
  /** Reads the started kernel's RSS once it has gone quiet and trimmed what starting left. */
  idle(): Promise<void>;
  /** The RSS line: idle (as idle() read it), right after the bench, and after the trim that load makes due. */
  afterLoad(): Promise<string>;
}

/**
 * Watches a kernel's log (its stdout, at level info) for its memory trims (src/server/memory-trim.ts logs
 * each with rssAfterMiB), so a bench reads the RSS after a trim rather than after a guessed sleep: after
 * heavy load the kernel may stay busy (outbox, audit) past any fixed wait. The line names the allocator
 * the kernel runs on (kernelLaunch preloads jemalloc where the machine has it).
 */
export function watchKernelMemory(kernel: ChildProcess): KernelMemory {
  const pid = kernel.pid!;
  let trims = 0;
  const trimmed = new EventEmitter();
  createInterface({ input: kernel.stdout! }).on("line", (line) => {
    if (!line.includes('"rssAfterMiB":')) return;
    trims++;
    trimmed.emit("trim");
  });
  // True once more than `seen` trims have run, false after TRIM_WAIT_MS without one.
  const trimPast = (seen: number): Promise<boolean> =>
    trims > seen
      ? Promise.resolve(true)
      : once(trimmed, "trim", { signal: AbortSignal.timeout(TRIM_WAIT_MS) }).then(
          () => true,
          () => false,
        );
  // Under a CPU profiler (NOPS_BENCH_PROFILE) the kernel is never quiet enough to trim: say so, not fail.
  let idleMiB = 0;
  let idleUntrimmed = false;
  return {
    async idle() {
      // Starting counts as growth, so the first quiet window after the start trims.
      idleUntrimmed = !(await trimPast(0));
      idleMiB = rssMiB(pid);
    },
    async afterLoad() {
      const seen = trims;
      const after = rssMiB(pid);
      const allocator = /libjemalloc\.so/.test(readFileSync(`/proc/${pid}/maps`, "utf8")) ? "jemalloc" : "glibc malloc";
      const idle = `${idleMiB.toFixed(0)} MiB${idleUntrimmed ? " (no trim)" : ""}`;
      const line = `kernel RSS: idle ${idle}, after the bench ${after.toFixed(0)} MiB, after its idle trim`;
      // The kernel trims only what grew past minGrowthMiB since its last trim (at idle).
      if (after - idleMiB < DEFAULT_MEMORY_TRIM_OPTIONS.minGrowthMiB)
        return `${line} (none due) ${after.toFixed(0)} MiB; ${allocator}`;
      const wait = (await trimPast(seen)) ? "" : `(none within ${TRIM_WAIT_MS / 1000} s) `;
      return `${line} ${wait}${rssMiB(pid).toFixed(0)} MiB; ${allocator}`;
    },
  };
}
