import { type EgressGuard, TENANT_HEADER, createGuardedFetch } from "../egress/index.js";
import { failedPrecondition, unavailable } from "../common/index.js";

/** Options every approved HTTP client takes. */
export interface JsonHttpClientOptions {
  /** Base URL of the service, e.g. "https://billing.example". */
  baseUrl: string;
  /** Per-call timeout, ms. @default 10000 */
  timeoutMs?: number;
}

/** POSTs JSON through the Egress Guard (the only way the approved clients reach the network). */
export type JsonPost = <T>(tenant: string, path: string, body: unknown, signal?: AbortSignal) => Promise<T>;

/** Builds a JSON POST function whose transport is the guarded fetch for `destination`. */
export function createJsonPost(
  guard: EgressGuard,
  destination: string,
  options: JsonHttpClientOptions,
  baseFetch?: typeof fetch,
): JsonPost {
  const guardedFetch = createGuardedFetch(guard, destination, baseFetch);
  const base = options.baseUrl.replace(/\/+$/, "");
  return async <T>(tenant: string, path: string, body: unknown, signal?: AbortSignal): Promise<T> => {
    const timeout = AbortSignal.timeout(options.timeoutMs ?? 10_000);
    const res = await guardedFetch(`${base}${path}`, {
      method: "POST",
      headers: { "content-type": "application/json", [TENANT_HEADER]: tenant },
      body: JSON.stringify(body),
      signal: signal ? AbortSignal.any([signal, timeout]) : timeout,
    });
    if (!res.ok)
      throw (res.status >= 500 ? unavailable : failedPrecondition)(`${destination} answered HTTP ${res.status}`);
    return (await res.json()) as T;
  };
}
