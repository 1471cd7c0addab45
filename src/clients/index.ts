/** The approved outbound clients; nothing else in the kernel may open an outbound connection. */
export { createBillingClient, type BillingClient } from "./billing-client.js";
export { createComplianceClient, type ComplianceClient } from "./compliance-client.js";
export { createDgeClient, resolveDgeClientOptions, type DgeClient, type DgeClientOptions } from "./dge-client.js";
export { createInferenceClient, type InferenceClient } from "./inference-client.js";
export { createObservabilityClient, type ObservabilityClient } from "./observability-client.js";
export { createSandboxClient, type SandboxClient } from "./sandbox-client.js";
export { createScorecardClient, type ScorecardClient } from "./scorecard-client.js";
export { createJsonPost, type JsonHttpClientOptions, type JsonPost } from "./json-http.js";
