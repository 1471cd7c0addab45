import { ConfigError, readBool, readInt, readObject, readString, readStringList } from "../common/index.js";
import { resolveToolPolicies, type ToolPolicyOptions } from "./tool-policies.js";
import { resolveUpstreams, type UpstreamOptions } from "./upstream-options.js";

/** The HTTP path of the MCP endpoint. */
export const MCP_PATH = "/mcp";
/** RFC 9728 §3: the metadata of resource `<origin>/mcp` is at this path (and, for older clients, without `/mcp`). */
export const PROTECTED_RESOURCE_PATH = "/.well-known/oauth-protected-resource";

/** The MCP endpoint's settings (config section `mcp`, see docs/mcp.md). */
export interface McpOptions {
  /** Serve MCP at /mcp on the HTTP port. @default true */
  enabled: boolean;
  /**
   * The canonical URI of this MCP server (RFC 9728 `resource`, RFC 8707): bearer tokens for /mcp must
   * name it in `aud`. Empty: `http(s)://<http.host>:<http.port>/mcp` as the kernel listens. @default ""
   */
  resource: string;
  /**
   * Authorization servers advertised in the protected resource metadata. Empty: the JWT issuers of
   * `identity.jwt.issuer`. @default []
   */
  authorizationServers: string[];
  /**
   * Browser origins allowed to call /mcp besides the resource's own. MCP (transports, "Security
   * Warning") requires validating Origin against DNS rebinding: a request with another Origin is
   * refused 403; requests without one (non-browser clients) pass. @default []
   */
  allowedOrigins: string[];
  /** Most open MCP sessions; an initialize beyond it is refused 503 until one ends. @default 1000 */
  maxSessions: number;
  /** A session with no request for this long is closed. @default 1800000 (30 min) */
  sessionIdleMs: number;
  /** Call-time argument policies in CEL, checked before a tool call is routed (see docs/mcp.md). @default [] */
  policies: ToolPolicyOptions[];
  /** External MCP servers (Streamable HTTP) federated into one tenant's catalog each. @default [] */
  upstreams: UpstreamOptions[];
}

/** Defaults of McpOptions. */
export const DEFAULT_MCP_OPTIONS: Readonly<McpOptions> = {
  enabled: true,
  resource: "",
  authorizationServers: [],
  allowedOrigins: [],
  maxSessions: 1000,
  sessionIdleMs: 30 * 60_000,
  policies: [],
  upstreams: [],
};

function checkUrl(value: string, field: string): string {
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    throw new ConfigError(`${field} is not an absolute URL (got ${JSON.stringify(value.slice(0, 100))})`);
  }
  if (url.protocol !== "https:" && url.protocol !== "http:") throw new ConfigError(`${field} must be http(s)`);
  // RFC 8707 §2: a resource indicator carries no fragment.
  if (url.hash) throw new ConfigError(`${field} must not carry a fragment`);
  return value;
}

/** Fills defaults and validates; throws ConfigError naming the bad field. */
export function resolveMcpOptions(input: unknown = {}, path = "mcp"): McpOptions {
  const o = readObject(input, path);
  const d = DEFAULT_MCP_OPTIONS;
  const resource = readString(o, "resource", path, d.resource);
  if (resource !== "") checkUrl(resource, `${path}.resource`);
  const authorizationServers = readStringList(o, "authorizationServers", path, d.authorizationServers);
  authorizationServers.forEach((s, i) => checkUrl(s, `${path}.authorizationServers[${i}]`));
  const allowedOrigins = readStringList(o, "allowedOrigins", path, d.allowedOrigins);
  allowedOrigins.forEach((s, i) => {
    const field = `${path}.allowedOrigins[${i}]`;
    if (new URL(checkUrl(s, field)).origin !== s)
      throw new ConfigError(`${field} must be an origin (scheme://host[:port])`);
  });
  return {
    enabled: readBool(o, "enabled", path, d.enabled),
    resource,
    authorizationServers,
    allowedOrigins,
    maxSessions: readInt(o, "maxSessions", path, d.maxSessions, 1, 1_000_000),
    sessionIdleMs: readInt(o, "sessionIdleMs", path, d.sessionIdleMs, 1000, 7 * 24 * 3600_000),
    policies: resolveToolPolicies(o.policies, `${path}.policies`),
    upstreams: resolveUpstreams(o.upstreams, `${path}.upstreams`),
  };
}
