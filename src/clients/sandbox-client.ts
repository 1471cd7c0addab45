import type { EgressGuard } from "../egress/index.js";
import { createJsonPost, type JsonHttpClientOptions } from "./json-http.js";

/** Client of the external sandbox runtime. */
export interface SandboxClient {
  /** Asks the sandbox runtime for a sandbox. */
  createSandbox(tenant: string, body: Record<string, unknown>, signal?: AbortSignal): Promise<Record<string, unknown>>;
}

/** Creates the sandbox client; every call goes through the Egress Guard. */
export function createSandboxClient(
  deps: { guard: EgressGuard; fetch?: typeof fetch },
  options: JsonHttpClientOptions,
): SandboxClient {
  const post = createJsonPost(deps.guard, "sandbox", options, deps.fetch);
  return {
    createSandbox: (tenant, body, signal) => post(tenant, "/v1/sandboxes", body, signal),
  };
}
