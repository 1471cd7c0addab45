import { ConfigError, TENANT_PATTERN, readInt, readObject, readString } from "../common/index.js";

/** One external MCP server an operator federated into a tenant's catalog (config `mcp.upstreams[]`). */
export interface UpstreamOptions {
  /** Namespace of its tools: they are listed as `<name>__<tool>`. */
  name: string;
  /** The one tenant whose catalog shows it, and whose tier the Egress Guard applies to its traffic. */
  tenant: string;
  /** Its Streamable HTTP endpoint. */
  url: string;
  /** Longest tools/call or tools/list, ms. @default 10000 */
  timeoutMs: number;
  /** How long a fetched tool list is served before it is fetched again, ms. @default 10000 */
  listTtlMs: number;
}

/** Separator between the upstream's name and its tool's name. */
export const UPSTREAM_SEPARATOR = "__";
const NAME = /^[A-Za-z0-9][A-Za-z0-9-]{0,31}$/;

/** Validates `mcp.upstreams`; throws ConfigError naming the field. */
export function resolveUpstreams(input: unknown, path = "mcp.upstreams"): UpstreamOptions[] {
  if (input === undefined) return [];
  if (!Array.isArray(input)) throw new ConfigError(`${path} must be a list`);
  const seen = new Set<string>();
  return input.map((raw, i) => {
    const at = `${path}[${i}]`;
    const o = readObject(raw, at);
    const name = readString(o, "name", at, "", { nonEmpty: true, pattern: NAME });
    const tenant = readString(o, "tenant", at, "", { nonEmpty: true, pattern: TENANT_PATTERN });
    if (seen.has(`${tenant}/${name}`)) throw new ConfigError(`${at}.name: ${name} is already an upstream of ${tenant}`);
    seen.add(`${tenant}/${name}`);
    const url = readString(o, "url", at, "", { nonEmpty: true });
    let parsed: URL;
    try {
      parsed = new URL(url);
    } catch {
      throw new ConfigError(`${at}.url is not an absolute URL`);
    }
    if (parsed.protocol !== "https:" && parsed.protocol !== "http:") throw new ConfigError(`${at}.url must be http(s)`);
    if (parsed.username || parsed.password) throw new ConfigError(`${at}.url must not carry credentials`);
    return {
      name,
      tenant,
      url: parsed.href,
      timeoutMs: readInt(o, "timeoutMs", at, 10_000, 100, 600_000),
      listTtlMs: readInt(o, "listTtlMs", at, 10_000, 0, 3_600_000),
    };
  });
}
