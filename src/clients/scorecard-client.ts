import type { EgressGuard } from "../egress/index.js";
import { createJsonPost, type JsonHttpClientOptions } from "./json-http.js";

/** Client of the external agent scorecard service. */
export interface ScorecardClient {
  /** Reports an agent's score for a run. */
  submitScore(tenant: string, body: Record<string, unknown>, signal?: AbortSignal): Promise<Record<string, unknown>>;
}

/** Creates the scorecard client; every call goes through the Egress Guard. */
export function createScorecardClient(
  deps: { guard: EgressGuard; fetch?: typeof fetch },
  options: JsonHttpClientOptions,
): ScorecardClient {
  const post = createJsonPost(deps.guard, "scorecard", options, deps.fetch);
  return {
    submitScore: (tenant, body, signal) => post(tenant, "/v1/scores", body, signal),
  };
}
