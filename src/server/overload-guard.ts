import { readdirSync, readFileSync } from "node:fs";
import { monitorEventLoopDelay } from "node:perf_hooks";
import { getHeapStatistics } from "node:v8";
import type { Meter } from "@opentelemetry/api";
import { ConfigError, unavailable } from "../common/index.js";
import { readBool, readInt, readNumber, readSection, readStringList } from "../common/index.js";
import type { Logger } from "pino";
import { methodPath, type KernelInterceptor } from "./interceptor.js";

/** The `admin.overload` section. */
export interface OverloadOptions {
  /** Shed new calls while a watermark is crossed. @default true */
  enabled: boolean;
  /** How often the monitors are sampled, ms. @default 250 */
  sampleIntervalMs: number;
  /** p99 event-loop delay over the last sample window above which new calls are shed, ms (0 = off). @default 250 */
  eventLoopDelayMs: number;
  /** Share of V8's heap limit in use above which new calls are shed (0 = off). @default 0.92 */
  heapUsedRatio: number;
  /** Share of the descriptor soft limit (RLIMIT_NOFILE) in use above which calls are shed (0 = off). @default 0.9 */
  openFdsRatio: number;
  /**
   * A crossed watermark is cleared only once its value falls below this share of the watermark,
   * so shedding does not flap on every sample (Envoy's overload manager scales the same way). @default 0.8
   */
  recoverRatio: number;
  /**
   * Samples in a row a watermark must be crossed before shedding starts: one descheduled slice on
   * a throttled or shared CPU shows as one huge event-loop delay sample and is not overload. @default 2
   */
  consecutiveSamples: number;
  /** Retry hint sent with a shed call (retry-after, grpc-retry-pushback-ms), ms. @default 1000 */
  retryAfterMs: number;
  /** Method paths (or "/package.Service/" prefixes) never shed, so health and status stay answerable. */
  exempt: string[];
}

/** Default monitor sampling interval. */
export const DEFAULT_OVERLOAD_SAMPLE_INTERVAL_MS = 250;
/** Default event-loop delay watermark (p99 over one window). */
export const DEFAULT_OVERLOAD_EVENT_LOOP_DELAY_MS = 250;
/** Default heap watermark. */
export const DEFAULT_OVERLOAD_HEAP_USED_RATIO = 0.92;
/** Default descriptor watermark. */
export const DEFAULT_OVERLOAD_OPEN_FDS_RATIO = 0.9;
/** Default recovery share. */
export const DEFAULT_OVERLOAD_RECOVER_RATIO = 0.8;
/** Default samples in a row before a watermark trips. */
export const DEFAULT_OVERLOAD_CONSECUTIVE_SAMPLES = 2;
/** Default retry hint. */
export const DEFAULT_OVERLOAD_RETRY_AFTER_MS = 1000;
/** Default exemptions: gRPC health checks and the kernel's status. */
export const DEFAULT_OVERLOAD_EXEMPT: readonly string[] = [
  "/grpc.health.v1.Health/",
  "/nops.kernel.v1.AdminService/GetStatus",
];

/** Default overload settings. */
export const DEFAULT_OVERLOAD_OPTIONS: OverloadOptions = {
  enabled: true,
  sampleIntervalMs: DEFAULT_OVERLOAD_SAMPLE_INTERVAL_MS,
  eventLoopDelayMs: DEFAULT_OVERLOAD_EVENT_LOOP_DELAY_MS,
  heapUsedRatio: DEFAULT_OVERLOAD_HEAP_USED_RATIO,
  openFdsRatio: DEFAULT_OVERLOAD_OPEN_FDS_RATIO,
  recoverRatio: DEFAULT_OVERLOAD_RECOVER_RATIO,
  consecutiveSamples: DEFAULT_OVERLOAD_CONSECUTIVE_SAMPLES,
  retryAfterMs: DEFAULT_OVERLOAD_RETRY_AFTER_MS,
  exempt: [...DEFAULT_OVERLOAD_EXEMPT],
};

/** Validates `admin.overload`; throws ConfigError naming the field. */
export function resolveOverloadOptions(input: unknown = {}, path = "admin.overload"): OverloadOptions {
  const d = DEFAULT_OVERLOAD_OPTIONS;
  const s = readSection(input, path, d);
  const ratio = (key: keyof OverloadOptions, fallback: number) => readNumber(s, key, path, fallback, 0, 1);
  const exempt = readStringList(s, "exempt", path, d.exempt);
  exempt.forEach((e, i) => {
    if (!e.startsWith("/")) throw new ConfigError(`${path}.exempt[${i}] must be a method path starting with "/"`);
  });
  return {
    enabled: readBool(s, "enabled", path, d.enabled),
    sampleIntervalMs: readInt(s, "sampleIntervalMs", path, d.sampleIntervalMs, 10, 60_000),
    eventLoopDelayMs: readInt(s, "eventLoopDelayMs", path, d.eventLoopDelayMs, 0, 60_000),
    heapUsedRatio: ratio("heapUsedRatio", d.heapUsedRatio),
    openFdsRatio: ratio("openFdsRatio", d.openFdsRatio),
    recoverRatio: ratio("recoverRatio", d.recoverRatio),
    consecutiveSamples: readInt(s, "consecutiveSamples", path, d.consecutiveSamples, 1, 1000),
    retryAfterMs: readInt(s, "retryAfterMs", path, d.retryAfterMs, 1, 600_000),
    exempt,
  };
}

/** Reads the process's resource use; injected in tests. */
export interface OverloadSamplers {
  /** p99 event-loop delay since the previous call, ms. */
  eventLoopDelayMs(): number;
  /** Heap in use / heap limit. */
  heapUsedRatio(): number;
  /** Open descriptors / soft limit; undefined where it cannot be read (no /proc). */
  openFdsRatio(): number | undefined;
  /** Releases what the samplers hold (the event-loop histogram). */
  close?(): void;
}

/** Linux soft RLIMIT_NOFILE, from /proc/self/limits; undefined elsewhere or when unlimited. */
function openFilesLimit(): number | undefined {
  try {
    const line = readFileSync("/proc/self/limits", "utf8")
      .split("\n")
      .find((l) => l.startsWith("Max open files"));
    const soft = line ? Number(line.slice("Max open files".length).trim().split(/\s+/)[0]) : NaN;
    return Number.isFinite(soft) && soft > 0 ? soft : undefined;
  } catch {
    return undefined;
  }
}

/** The real samplers: perf_hooks event-loop delay histogram, V8 heap statistics, /proc/self/fd. */
export function createProcessSamplers(): OverloadSamplers {
  const loop = monitorEventLoopDelay({ resolution: 10 });
  loop.enable();
  const fdLimit = openFilesLimit();
  return {
    eventLoopDelayMs() {
      // The histogram counts delay beyond the 10 ms resolution timer, in ns.
      const p99 = loop.count > 0 ? loop.percentile(99) / 1e6 : 0;
      loop.reset();
      return p99;
    },
    heapUsedRatio() {
      const h = getHeapStatistics();
      return h.heap_size_limit > 0 ? h.used_heap_size / h.heap_size_limit : 0;
    },
    openFdsRatio() {
      if (fdLimit === undefined) return undefined;
      try {
        return readdirSync("/proc/self/fd").length / fdLimit;
      } catch {
        return undefined;
      }
    },
    close: () => loop.disable(),
  };
}

/** One monitor's last reading. */
export interface MonitorReading {
  monitor: "event-loop-delay" | "heap" | "open-fds";
  value: number;
  watermark: number;
  /** True while this monitor holds the kernel in overload. */
  tripped: boolean;
}

/** What the overload guard needs. */
export interface OverloadGuardDeps {
  logger: Logger;
  meter?: Meter;
  /** @default createProcessSamplers() */
  samplers?: OverloadSamplers;
}

/** Sheds new calls while the process is short of event loop, heap or descriptors. */
export interface OverloadGuard {
  /** Put early in the chain: refuses non-exempt calls with UNAVAILABLE and a retry hint while overloaded. */
  readonly interceptor: KernelInterceptor;
  /** Samples every monitor now and updates the state (the timer does this every sampleIntervalMs). */
  sample(): readonly MonitorReading[];
  overloaded(): boolean;
  /** For the status matrix: ok, or degraded naming the watermark crossed. */
  status(): { name: string; state: "ok" | "degraded"; detail?: string };
  start(): void;
  stop(): void;
}

/**
 * Creates the overload guard. Sampling is off the hot path (a timer); the interceptor only reads
 * a boolean, so an overloaded kernel spends next to nothing refusing a call.
 */
export function createOverloadGuard(deps: OverloadGuardDeps, options: OverloadOptions): OverloadGuard {
  const log = deps.logger.child({ component: "overload" });
  const samplers = deps.samplers ?? createProcessSamplers();
  const watermarks = {
    "event-loop-delay": options.eventLoopDelayMs,
    heap: options.heapUsedRatio,
    "open-fds": options.openFdsRatio,
  } as const;
  const tripped = new Set<MonitorReading["monitor"]>();
  const crossed = new Map<MonitorReading["monitor"], number>();
  let readings: MonitorReading[] = [];
  let timer: NodeJS.Timeout | undefined;
  const shed = deps.meter?.createCounter("nops_overload_shed", {
    description: "Calls refused with UNAVAILABLE because the kernel was overloaded",
  });
  deps.meter
    ?.createObservableGauge("nops_overload_state", {
      description: "1 while new calls are shed (a resource watermark is crossed), else 0",
    })
    .addCallback((r) => r.observe(tripped.size > 0 ? 1 : 0));
  deps.meter
    ?.createObservableGauge("nops_overload_pressure", {
      description: "Each monitor's last value as a share of its watermark (1 = shedding starts)",
    })
    .addCallback((r) => {
      for (const m of readings) r.observe(m.watermark > 0 ? m.value / m.watermark : 0, { monitor: m.monitor });
    });

  const exempt = (path: string): boolean =>
    options.exempt.some((e) => (e.endsWith("/") ? path.startsWith(e) : path === e));
  const describe = (): string =>
    readings
      .filter((m) => m.tripped)
      .map((m) =>
        m.monitor === "event-loop-delay"
          ? `event-loop delay p99 ${m.value.toFixed(0)} ms >= ${m.watermark} ms`
          : `${m.monitor} at ${(m.value * 100).toFixed(1)}% >= ${(m.watermark * 100).toFixed(0)}%`,
      )
      .join("; ");

  function sample(): readonly MonitorReading[] {
    const values: Record<MonitorReading["monitor"], number | undefined> = {
      "event-loop-delay": samplers.eventLoopDelayMs(),
      heap: samplers.heapUsedRatio(),
      "open-fds": samplers.openFdsRatio(),
    };
    const was = tripped.size > 0;
    const next: MonitorReading[] = [];
    for (const monitor of ["event-loop-delay", "heap", "open-fds"] as const) {
      const watermark = watermarks[monitor];
      const value = values[monitor];
      if (!watermark || value === undefined) {
        tripped.delete(monitor);
        crossed.delete(monitor);
        continue;
      }
      const inARow = value >= watermark ? (crossed.get(monitor) ?? 0) + 1 : 0;
      crossed.set(monitor, inARow);
      if (inARow >= options.consecutiveSamples) tripped.add(monitor);
      else if (value < watermark * options.recoverRatio) tripped.delete(monitor);
      next.push({ monitor, value, watermark, tripped: tripped.has(monitor) });
    }
    readings = next;
    const is = tripped.size > 0;
    if (is && !was) log.warn({ reason: describe() }, "overloaded: shedding new calls");
    else if (!is && was) log.info("no longer overloaded: accepting new calls");
    return readings;
  }

  const interceptor: KernelInterceptor = (next) => (call) => {
    if (tripped.size === 0 || !options.enabled) return next(call);
    const path = methodPath(call.method);
    if (exempt(path)) return next(call);
    shed?.add(1, { monitor: [...tripped].join(",") });
    return Promise.reject(unavailable("server overloaded; retry later", options.retryAfterMs));
  };

  return {
    interceptor,
    sample,
    overloaded: () => options.enabled && tripped.size > 0,
    status: () =>
      options.enabled && tripped.size > 0
        ? { name: "overload", state: "degraded", detail: `shedding new calls: ${describe()}` }
        : { name: "overload", state: "ok" },
    start() {
      if (timer || !options.enabled) return;
      timer = setInterval(() => {
        try {
          sample();
        } catch (err) {
          log.error({ err }, "overload sampling failed");
        }
      }, options.sampleIntervalMs).unref();
    },
    stop() {
      clearInterval(timer);
      timer = undefined;
      samplers.close?.();
    },
  };
}
