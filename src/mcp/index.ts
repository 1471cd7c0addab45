/** The MCP capability's public surface: the endpoint on the HTTP port and its options. */
export {
  createMcpEndpoint,
  MCP_FORBIDDEN,
  MCP_PROTOCOL_VERSIONS,
  MCP_RATE_LIMITED,
  type McpEndpoint,
  type McpEndpointDeps,
  type ToolInvocation,
  type ToolInvocationResult,
} from "./mcp-endpoint.js";
export {
  DEFAULT_MCP_OPTIONS,
  MCP_PATH,
  PROTECTED_RESOURCE_PATH,
  resolveMcpOptions,
  type McpOptions,
} from "./mcp-options.js";
export {
  createToolPolicies,
  resolveToolPolicies,
  type ToolPolicies,
  type ToolPolicyDecision,
  type ToolPolicyOptions,
} from "./tool-policies.js";
export {
  principalFrom,
  readPolicyCases,
  runPolicyCases,
  type PolicyCase,
  type PolicyCaseResult,
} from "./policy-test.js";
export { createUpstreams, isUpstreamFailure, type Upstreams } from "./upstream-servers.js";
export { resolveUpstreams, UPSTREAM_SEPARATOR, type UpstreamOptions } from "./upstream-options.js";
