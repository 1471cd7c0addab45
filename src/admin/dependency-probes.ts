import type { DependencyProbe } from "./status-matrix.js";
import type { BreakerStatus, DependencyBreaker, DependencyStatus } from "../common/index.js";
import type { Logger } from "../telemetry/index.js";

/**
 * Probe of an ioredis client: ok when its connection is "ready", down otherwise (connecting,
 * reconnecting, end). ioredis tracks this itself, so the probe costs nothing.
 */
export function redisProbe(redis: { readonly status: string }): DependencyProbe {
  return () =>
    redis.status === "ready"
      ? { name: "redis", state: "ok" }
      : { name: "redis", state: "down", detail: `redis connection ${redis.status}` };
}

/** Probe of anything that reports its own status (the kernel's Redis: disconnected or hung). */
export function statusProbe(source: { status(): BreakerStatus }): DependencyProbe {
  return () => source.status();
}

/** A probe whose answer comes from a periodic asynchronous check (a remote service's health). */
export interface PollingProbe {
  readonly probe: DependencyProbe;
  start(): void;
  stop(): void;
  /** Runs the check now (tests; also the first check at start). */
  poll(): Promise<DependencyStatus>;
}

/**
 * Polls `check` every `intervalMs` (bounded by `timeoutMs`) and keeps the last answer, so the
 * matrix reads a remote dependency's state synchronously and notices an outage even when no
 * traffic is flowing.
 */
export function createPollingProbe(
  deps: { logger: Logger },
  options: {
    name: string;
    intervalMs: number;
    timeoutMs: number;
    check: (signal: AbortSignal) => Promise<void>;
    /**
     * The dependency's breaker: checks run through breaker.probe (so they are what closes an open
     * circuit), and the probe reports down while the circuit is open even between checks.
     */
    breaker?: DependencyBreaker;
  },
): PollingProbe {
  let last: DependencyStatus = { name: options.name, state: "ok" };
  let timer: NodeJS.Timeout | undefined;
  const { breaker } = options;
  const poll = async (): Promise<DependencyStatus> => {
    try {
      if (breaker) await breaker.probe((signal) => options.check(signal));
      else await options.check(AbortSignal.timeout(options.timeoutMs));
      if (last.state !== "ok") deps.logger.info({ dependency: options.name }, "dependency reachable again");
      last = { name: options.name, state: "ok" };
    } catch (err) {
      const detail = `unreachable: ${err instanceof Error ? err.message : String(err)}`;
      if (last.state === "ok") deps.logger.warn({ dependency: options.name, detail }, "dependency unreachable");
      last = { name: options.name, state: "down", detail };
    }
    return last;
  };
  return {
    probe: () => {
      const open = breaker?.status();
      return open && open.state !== "ok" ? { ...open, name: options.name } : last;
    },
    poll,
    start() {
      void poll();
      timer = setInterval(() => void poll(), options.intervalMs).unref();
    },
    stop() {
      clearInterval(timer);
    },
  };
}
