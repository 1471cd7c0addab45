import type { EgressGuard } from "../egress/index.js";
import { createJsonPost, type JsonHttpClientOptions } from "./json-http.js";

/** Client of the external compliance service. */
export interface ComplianceClient {
  /** Submits compliance evidence. */
  submitEvidence(tenant: string, body: Record<string, unknown>, signal?: AbortSignal): Promise<Record<string, unknown>>;
}

/** Creates the compliance client; every call goes through the Egress Guard. */
export function createComplianceClient(
  deps: { guard: EgressGuard; fetch?: typeof fetch },
  options: JsonHttpClientOptions,
): ComplianceClient {
  const post = createJsonPost(deps.guard, "compliance", options, deps.fetch);
  return {
    submitEvidence: (tenant, body, signal) => post(tenant, "/v1/evidence", body, signal),
  };
}
