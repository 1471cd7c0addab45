import { egressDeniedError, type EgressGuard } from "./egress-guard.js";
import { TENANT_HEADER } from "./egress-interceptors.js";
import { OVERRIDE_HEADER } from "./override-grant.js";
import { injectTraceHeaders } from "../telemetry/index.js";

/** fetch with the guard in front; tenant from the x-nops-tenant header. */
export type GuardedFetch = (url: string | URL, init?: RequestInit) => Promise<Response>;

/**
 * Wraps fetch for HTTP egress. The URL (path and query carry data too) and the body are checked;
 * a blocked request rejects with PERMISSION_DENIED and nothing is sent. Streaming bodies cannot
 * be classified before they are sent, so they are refused. An allowed request carries the active
 * trace (`traceparent`, `tracestate`).
 */
export function createGuardedFetch(
  guard: EgressGuard,
  destination: string,
  baseFetch: typeof fetch = fetch,
): GuardedFetch {
  return async (url, init = {}) => {
    const headers = new Headers(init.headers);
    const tenant = headers.get(TENANT_HEADER) ?? "";
    const override = headers.get(OVERRIDE_HEADER) ?? undefined;
    headers.delete(OVERRIDE_HEADER);
    const body = init.body;
    let bodyText: unknown = "";
    if (typeof body === "string" || body instanceof Uint8Array) bodyText = body;
    else if (body instanceof URLSearchParams) bodyText = body.toString();
    else if (body instanceof ArrayBuffer) bodyText = new Uint8Array(body);
    else if (body !== undefined && body !== null) {
      throw new TypeError(
        "guarded fetch: only string, Uint8Array, ArrayBuffer or URLSearchParams bodies can be checked",
      );
    }
    const u = new URL(url);
    const text = `${decodeURIComponent(u.pathname + u.search)}\n${typeof bodyText === "string" ? bodyText : ""}`;
    const d = await guard.check({
      tenant,
      transport: "http",
      destination: `${destination}:${u.origin}${u.pathname}`,
      dataType: headers.get("content-type") ?? "",
      payload: typeof bodyText === "string" ? text : bodyText,
      override,
      signal: init.signal ?? undefined,
    });
    if (!d.allowed) throw egressDeniedError(d);
    // The call continues the caller's trace, unless the caller named a parent itself.
    if (!headers.has("traceparent")) injectTraceHeaders(headers);
    return baseFetch(u, { ...init, headers });
  };
}
