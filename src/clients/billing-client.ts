import type { EgressGuard } from "../egress/index.js";
import { createJsonPost, type JsonHttpClientOptions } from "./json-http.js";

/** Client of the external billing service. */
export interface BillingClient {
  /** Reports metered usage. */
  reportUsage(tenant: string, body: Record<string, unknown>, signal?: AbortSignal): Promise<Record<string, unknown>>;
}

/** Creates the billing client; every call goes through the Egress Guard. */
export function createBillingClient(
  deps: { guard: EgressGuard; fetch?: typeof fetch },
  options: JsonHttpClientOptions,
): BillingClient {
  const post = createJsonPost(deps.guard, "billing", options, deps.fetch);
  return {
    reportUsage: (tenant, body, signal) => post(tenant, "/v1/usage", body, signal),
  };
}
