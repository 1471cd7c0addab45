import { performance } from "node:perf_hooks";
import type { Meter } from "@opentelemetry/api";
import type { Logger } from "pino";
import { readBool, readInt, readNumber, readSection } from "../common/index.js";

/**
 * The `admin.memoryTrim` section. V8 grows its heap under load (old space up to about four times what
 * is live) and keeps the pages it freed; its own memory reducer never runs in Node, which does not tell
 * V8 when the process has gone idle. So after a burst the kernel's RSS stays at its peak. Once the kernel
 * has been quiet for `quietMs` and its resident set grew by `minGrowthMiB` since the last trim, it asks V8
 * for a memory-reducing full collection (the one V8 runs on memory pressure), which also returns the
 * pooled pages to the OS. It pauses the event loop for that collection (tens to a few hundred ms): a call
 * that arrives during it waits, which is why it runs only when the kernel is quiet.
 */
export interface MemoryTrimOptions {
  /** Trim the heap once the kernel goes quiet after its memory grew. @default true */
  enabled: boolean;
  /** How long the event loop must stay quiet before a trim, ms. @default 10000 */
  quietMs: number;
  /** Event-loop utilisation (0–1) at or below which a one-second sample counts as quiet. @default 0.05 */
  quietUtilization: number;
  /**
   * Growth of the resident set since the last trim (or its lowest point since) that makes one worth its
   * pause, MiB. Resident, not V8's heap statistics: the pages V8 pools after a collection are in neither
   * its used nor its total heap size. @default 32
   */
  minGrowthMiB: number;
}

/** Default memory trim settings. */
export const DEFAULT_MEMORY_TRIM_OPTIONS: MemoryTrimOptions = {
  enabled: true,
  quietMs: 10_000,
  quietUtilization: 0.05,
  minGrowthMiB: 32,
};

/** How often the event loop's utilisation is sampled, ms. */
const SAMPLE_INTERVAL_MS = 1000;

/** Validates `admin.memoryTrim`; throws ConfigError naming the field. */
export function resolveMemoryTrimOptions(input: unknown = {}, path = "admin.memoryTrim"): MemoryTrimOptions {
  const d = DEFAULT_MEMORY_TRIM_OPTIONS;
  const s = readSection(input, path, d);
  return {
    enabled: readBool(s, "enabled", path, d.enabled),
    quietMs: readInt(s, "quietMs", path, d.quietMs, SAMPLE_INTERVAL_MS, 3_600_000),
    quietUtilization: readNumber(s, "quietUtilization", path, d.quietUtilization, 0, 1),
    minGrowthMiB: readInt(s, "minGrowthMiB", path, d.minGrowthMiB, 1, 1_000_000),
  };
}

/** What the trim reads and calls; the process's own unless injected (tests). */
export interface MemoryTrimProbes {
  /** Event-loop utilisation (0–1) since the previous call. */
  utilization(): number;
  /** The process's resident set, bytes. */
  rssBytes(): number;
  /** Runs a memory-reducing full collection; undefined when node was started without --expose-gc. */
  collect: (() => void) | undefined;
}

/** The process's probes: perf_hooks' event-loop utilisation, the resident set and V8's gc(). */
export function createProcessTrimProbes(): MemoryTrimProbes {
  let last = performance.eventLoopUtilization();
  // node --expose-gc installs V8's gc(); "last-resort" is the collection V8 runs on memory pressure:
  // full, repeated until nothing more is freed, and it releases the pooled pages.
  const gc = (globalThis as { gc?: (options: object) => void }).gc;
  return {
    utilization() {
      const now = performance.eventLoopUtilization();
      const u = performance.eventLoopUtilization(now, last).utilization;
      last = now;
      return u;
    },
    rssBytes: () => process.memoryUsage.rss(),
    collect: gc && (() => gc({ type: "major", execution: "sync", flavor: "last-resort" })),
  };
}

/** What the trim needs. */
export interface MemoryTrimDeps {
  logger: Logger;
  meter?: Meter;
  /** @default createProcessTrimProbes() */
  probes?: MemoryTrimProbes;
}

/** Returns V8's freed heap to the OS once the kernel goes quiet after a burst. */
export interface MemoryTrim {
  /** Takes one sample (the timer takes one a second) and trims when the conditions hold; true if it trimmed. */
  sample(): boolean;
  start(): void;
  stop(): void;
}

/** Creates the trim. Sampling is a one-second timer that keeps the process alive no longer than it would be. */
export function createMemoryTrim(deps: MemoryTrimDeps, options: MemoryTrimOptions): MemoryTrim {
  const log = deps.logger.child({ component: "memory-trim" });
  const probes = deps.probes ?? createProcessTrimProbes();
  const minGrowth = options.minGrowthMiB * 1024 * 1024;
  const trims = deps.meter?.createCounter("nops_memory_trims", {
    description: "Memory-reducing collections run after the kernel went quiet",
  });
  // Starting is a burst too (modules compiled, the registry and caches loaded): the first quiet window trims.
  let baseline = 0;
  let quietFor = 0;
  let timer: NodeJS.Timeout | undefined;

  function sample(): boolean {
    quietFor = probes.utilization() <= options.quietUtilization ? quietFor + SAMPLE_INTERVAL_MS : 0;
    const rss = probes.rssBytes();
    // Memory is also returned without us; measure growth from the lowest point seen.
    baseline = Math.min(baseline, rss);
    if (quietFor < options.quietMs || rss - baseline < minGrowth || !probes.collect) return false;
    const started = performance.now();
    probes.collect();
    const after = probes.rssBytes();
    const mib = (b: number) => Math.round(b / 1048576);
    log.info(
      { rssBeforeMiB: mib(rss), rssAfterMiB: mib(after), ms: Math.round(performance.now() - started) },
      "kernel quiet after its memory grew: returned the freed heap to the OS",
    );
    trims?.add(1);
    baseline = after;
    // The collection's own pause reads as a busy second; do not count it against the next quiet window.
    probes.utilization();
    quietFor = 0;
    return true;
  }

  return {
    sample,
    start() {
      if (!options.enabled || timer) return;
      if (!probes.collect) {
        log.info("memory trim is off: node runs without --expose-gc (nops-kernel and the image pass it)");
        return;
      }
      timer = setInterval(sample, SAMPLE_INTERVAL_MS);
      timer.unref();
    },
    stop() {
      clearInterval(timer);
      timer = undefined;
    },
  };
}
