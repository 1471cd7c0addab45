/** The MCP capability's public surface: the endpoint on the HTTP port and its options. */
export {
  createMcpEndpoint,
  MCP_FORBIDDEN,
  MCP_PATH,
  MCP_PROTOCOL_VERSIONS,
  MCP_RATE_LIMITED,
  PROTECTED_RESOURCE_PATH,
  type McpEndpoint,
  type McpEndpointDeps,
  type ToolInvocation,
  type ToolInvocationResult,
} from "./mcp-endpoint.js";
export { DEFAULT_MCP_OPTIONS, resolveMcpOptions, type McpOptions } from "./mcp-options.js";
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
export {
  createUpstreams,
  isUpstreamFailure,
  resolveUpstreams,
  UPSTREAM_SEPARATOR,
  type Upstreams,
  type UpstreamOptions,
} from "./upstream-servers.js";
