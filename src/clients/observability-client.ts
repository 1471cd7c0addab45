import type { EgressGuard } from "../egress/index.js";
import { createJsonPost, type JsonHttpClientOptions } from "./json-http.js";

/** Client of the observability collector (telemetry the edge exports). */
export interface ObservabilityClient {
  /** Sends a batch of telemetry records. */
  exportTelemetry(
    tenant: string,
    body: Record<string, unknown>,
    signal?: AbortSignal,
  ): Promise<Record<string, unknown>>;
}

/** Creates the observability client; every call goes through the Egress Guard. */
export function createObservabilityClient(
  deps: { guard: EgressGuard; fetch?: typeof fetch },
  options: JsonHttpClientOptions,
): ObservabilityClient {
  const post = createJsonPost(deps.guard, "observability", options, deps.fetch);
  return {
    exportTelemetry: (tenant, body, signal) => post(tenant, "/v1/telemetry", body, signal),
  };
}
