import type { EgressGuard } from "../egress/index.js";
import { createJsonPost, type JsonHttpClientOptions } from "./json-http.js";

/** Client of the external inference service. */
export interface InferenceClient {
  /** Runs a completion; the prompt is classified by the guard before it leaves. */
  complete(tenant: string, body: Record<string, unknown>, signal?: AbortSignal): Promise<Record<string, unknown>>;
}

/** Creates the inference client; every call goes through the Egress Guard. */
export function createInferenceClient(
  deps: { guard: EgressGuard; fetch?: typeof fetch },
  options: JsonHttpClientOptions,
): InferenceClient {
  const post = createJsonPost(deps.guard, "inference", options, deps.fetch);
  return {
    complete: (tenant, body, signal) => post(tenant, "/v1/complete", body, signal),
  };
}
