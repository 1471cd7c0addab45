import type { DependencyProbe } from "./status-matrix.js";

/**
 * Probe of an ioredis client: ok when its connection is "ready", down otherwise (connecting,
 * reconnecting, end). ioredis tracks this itself, so the probe costs nothing.
 */
export function redisProbe(redis: { readonly status: string }): DependencyProbe {
  return () => (redis.status === "ready" ? { name: "redis", state: "ok" } : { name: "redis", state: "down", detail: `redis connection ${redis.status}` });
}
