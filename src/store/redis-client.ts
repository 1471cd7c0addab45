import type { Meter } from "@opentelemetry/api";
import { Command, Redis } from "ioredis";
import {
  createDependencyBreaker,
  DEFAULT_BREAKER_FAILURES_TO_TRIP,
  DEFAULT_BREAKER_HALF_OPEN_AFTER_MS,
  DEFAULT_BREAKER_PROBE_INTERVAL_MS,
  resolveDependencyBreakerOptions,
  type BreakerStatus,
  type DependencyBreaker,
  type DependencyBreakerOptions,
} from "../common/index.js";
import type { Logger } from "pino";

/** Options of the shared Redis connection (`admin.dependencies.redis`; the URL is `redis.url`). */
export interface RedisClientOptions extends DependencyBreakerOptions {
  /** redis:// or rediss:// URL. */
  url: string;
}

/**
 * Default budget of one Redis command: 100 ms, a tenth of a short RPC deadline. A loopback or
 * same-zone Redis answers in well under a millisecond, so anything near this is a hung server.
 */
export const DEFAULT_REDIS_BUDGET_MS = 100;

/** Default Redis breaker settings (see DependencyBreakerOptions). */
export const DEFAULT_REDIS_BREAKER: DependencyBreakerOptions = {
  budgetMs: DEFAULT_REDIS_BUDGET_MS,
  failuresToTrip: DEFAULT_BREAKER_FAILURES_TO_TRIP,
  halfOpenAfterMs: DEFAULT_BREAKER_HALF_OPEN_AFTER_MS,
  probeIntervalMs: DEFAULT_BREAKER_PROBE_INTERVAL_MS,
};

/** Validates `admin.dependencies.redis`; throws ConfigError naming the field. */
export function resolveRedisBreakerOptions(
  input: unknown,
  path = "admin.dependencies.redis",
): DependencyBreakerOptions {
  return resolveDependencyBreakerOptions(input, path, DEFAULT_REDIS_BREAKER);
}

/** The kernel's Redis: a command connection behind a budget and breaker, a subscriber, and their health. */
export interface KernelRedis {
  /**
   * Used by the rate limiter, the nonce store and the DGE cache. Every command gets at most the
   * budget; while the circuit is open it is refused at once (DependencyUnavailableError), so those
   * callers take their in-memory fallback without waiting.
   */
  readonly client: Redis;
  /** Subscriber-mode connection (DGE cache invalidations). */
  readonly subscriber: Redis;
  readonly breaker: DependencyBreaker;
  /** ok; down when disconnected or not answering (hung). */
  status(): BreakerStatus;
  /** Starts the health probe (PING every probeIntervalMs through the breaker). */
  start(): void;
  close(): Promise<void>;
}

/** What the Redis client needs. */
export interface RedisClientDeps {
  logger: Logger;
  meter?: Meter;
}

function connect(url: string, log: Logger): Redis {
  // Commands fail fast instead of queueing while Redis is disconnected: callers fall back to memory.
  const client = new Redis(url, {
    enableOfflineQueue: false,
    maxRetriesPerRequest: 1,
    retryStrategy: (n) => Math.min(n * 200, 2000),
  });
  let down = false;
  client.on("error", (err: Error) => {
    if (!down) log.warn({ err: err.message }, "redis unreachable; using in-memory fallbacks");
    down = true;
  });
  client.on("ready", () => {
    if (down) log.info("redis reachable again");
    down = false;
  });
  return client;
}

/**
 * Creates the kernel's Redis connections. A Redis that accepts TCP but never answers (SIGSTOP, a
 * stuck fork) keeps the connection "ready", so ioredis alone would make every command wait out its
 * timeout; here each command runs through a DependencyBreaker, which opens after a few timeouts
 * (or failed PINGs when idle) and closes again when a PING is answered.
 */
export function createRedisClient(deps: RedisClientDeps, options: RedisClientOptions): KernelRedis {
  const log = deps.logger.child({ component: "redis" });
  const client = connect(options.url, log);
  const subscriber = connect(options.url, log);
  const breaker = createDependencyBreaker({ logger: log, meter: deps.meter }, "redis", options);
  const send = client.sendCommand.bind(client);

  const run = (command: Command, signal: AbortSignal): Promise<unknown> => {
    // A command given up on is rejected here; its late reply (if any) is matched and dropped by ioredis.
    signal.addEventListener("abort", () => command.reject(signal.reason as Error), { once: true });
    send(command);
    return command.promise;
  };
  // ioredis routes every command (scripts included) through sendCommand. Handshake commands run
  // before "ready" and a disconnected client refuses at once, so only a ready connection needs the guard.
  client.sendCommand = (command: Command, stream?: Parameters<Redis["sendCommand"]>[1]) => {
    if (client.status !== "ready" || stream) return send(command, stream);
    breaker.call((signal) => run(command, signal)).catch((err: unknown) => command.reject(err as Error));
    return command.promise;
  };

  let timer: NodeJS.Timeout | undefined;
  const ping = (): void => {
    if (client.status !== "ready") return;
    breaker.probe((signal) => run(new Command("ping", [], { replyEncoding: "utf8" }), signal)).catch(() => undefined);
  };
  return {
    client,
    subscriber,
    breaker,
    status() {
      if (client.status !== "ready")
        return { name: "redis", state: "down", detail: `redis connection ${client.status}` };
      return breaker.status();
    },
    start() {
      timer ??= setInterval(ping, options.probeIntervalMs).unref();
    },
    async close() {
      clearInterval(timer);
      timer = undefined;
      subscriber.disconnect();
      // QUIT waits for an answer a hung server never gives: bounded by the budget, then dropped.
      await Promise.race([client.quit(), new Promise((r) => setTimeout(r, options.budgetMs))]).catch(() => undefined);
      client.disconnect();
    },
  };
}
