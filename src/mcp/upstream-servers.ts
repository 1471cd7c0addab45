import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { ErrorCode, McpError, type CallToolResult } from "@modelcontextprotocol/sdk/types.js";
import { Code, ConnectError } from "@connectrpc/connect";
import type { Clock } from "../common/index.js";
import type { Logger } from "../telemetry/index.js";
import type { ListedTool } from "./tool-catalog.js";
import { UPSTREAM_SEPARATOR, type UpstreamOptions } from "./upstream-options.js";

/** A circuit as the router's breakers provide it (src/routing/circuit-breakers.ts). */
export interface UpstreamCircuit {
  execute<T>(fn: () => Promise<T>): Promise<T>;
}

/** What the egress guard answers (a narrow view of egress's EgressDecision). */
export interface UpstreamEgressDecision {
  allowed: boolean;
  reason: string;
}

/** What the upstream gateway needs. */
export interface UpstreamDeps {
  /** fetch with the Egress Guard in front (createGuardedFetch): the only way out. */
  fetch: (url: string | URL, init?: RequestInit) => Promise<Response>;
  /** Classifies a payload for a tenant (the Egress Guard's check). */
  classify(request: {
    tenant: string;
    destination: string;
    payload: string;
    signal?: AbortSignal;
  }): Promise<UpstreamEgressDecision>;
  /** The circuit of one upstream, from the same breakers as agents. */
  circuit(key: string): UpstreamCircuit;
  clock: Clock;
  logger: Logger;
  /** Header that tells the guarded fetch whose data a request carries. */
  tenantHeader: string;
}

/** Why a federated call did not reach or was not returned from the upstream. */
export class UpstreamRefusal extends Error {
  override name = "UpstreamRefusal";
  constructor(
    readonly decision: "egress-blocked" | "result-blocked",
    readonly reason: string,
  ) {
    super(`${decision}: ${reason}`);
  }
}

/** The federated external MCP servers. */
export interface Upstreams {
  /** Tools of the tenant's upstreams, namespaced; an unreachable upstream contributes its last known list. */
  tools(tenant: string): Promise<ListedTool[]>;
  /** True when the name is a namespaced tool of one of the tenant's upstreams. */
  owns(tenant: string, tool: string): boolean;
  /** Calls a namespaced tool: arguments classified, call through the breaker, result classified. */
  call(tenant: string, tool: string, args: Record<string, unknown>, signal: AbortSignal): Promise<CallToolResult>;
  close(): Promise<void>;
}

interface Upstream {
  readonly options: UpstreamOptions;
  client?: Promise<Client>;
  listed: ListedTool[];
  listedAt: number;
}

/** Creates the gateway to the configured external MCP servers. */
export function createUpstreams(deps: UpstreamDeps, upstreams: readonly UpstreamOptions[]): Upstreams {
  const log = deps.logger.child({ component: "mcp-upstream" });
  const byTenant = new Map<string, Upstream[]>();
  for (const options of upstreams) {
    const list = byTenant.get(options.tenant) ?? [];
    list.push({ options, listed: [], listedAt: -Infinity });
    byTenant.set(options.tenant, list);
  }

  function connect(u: Upstream): Promise<Client> {
    u.client ??= (async () => {
      const client = new Client({ name: "nops-kernel-gateway", version: "1" });
      const transport = new StreamableHTTPClientTransport(new URL(u.options.url), {
        fetch: deps.fetch,
        requestInit: { headers: { [deps.tenantHeader]: u.options.tenant } },
      });
      client.onclose = () => (u.client = undefined);
      await client.connect(transport, { timeout: u.options.timeoutMs });
      return client;
    })().catch((e: unknown) => {
      u.client = undefined;
      throw e;
    });
    return u.client;
  }

  // A failed exchange drops the session so the next call reconnects (a restarted server has none).
  async function exchange<T>(u: Upstream, fn: (client: Client) => Promise<T>): Promise<T> {
    return deps.circuit(`mcp:${u.options.tenant}/${u.options.name}`).execute(async () => {
      try {
        return await fn(await connect(u));
      } catch (e) {
        const client = u.client;
        u.client = undefined;
        void client?.then((c) => c.close()).catch(() => undefined);
        throw e;
      }
    });
  }

  function find(tenant: string, tool: string): { upstream: Upstream; name: string } | undefined {
    const i = tool.indexOf(UPSTREAM_SEPARATOR);
    if (i <= 0) return undefined;
    const prefix = tool.slice(0, i);
    const upstream = byTenant.get(tenant)?.find((u) => u.options.name === prefix);
    return upstream && { upstream, name: tool.slice(i + UPSTREAM_SEPARATOR.length) };
  }

  return {
    async tools(tenant) {
      const out: ListedTool[] = [];
      for (const u of byTenant.get(tenant) ?? []) {
        if (deps.clock.now() - u.listedAt >= u.options.listTtlMs) {
          try {
            const { tools } = await exchange(u, (c) => c.listTools(undefined, { timeout: u.options.timeoutMs }));
            u.listed = tools.map((t) => ({
              name: `${u.options.name}${UPSTREAM_SEPARATOR}${t.name}`,
              title: t.title ?? t.name,
              description: `${t.description ?? t.name} (external MCP server ${u.options.name})`,
              inputSchema: t.inputSchema,
              ...(t.outputSchema ? { outputSchema: t.outputSchema } : {}),
            }));
            u.listedAt = deps.clock.now();
          } catch (e) {
            log.warn({ upstream: u.options.name, tenant, err: e }, "external MCP server did not list its tools");
          }
        }
        out.push(...u.listed);
      }
      return out;
    },
    owns: (tenant, tool) => find(tenant, tool) !== undefined,
    async call(tenant, tool, args, signal) {
      const found = find(tenant, tool);
      if (!found) throw new ConnectError(`unknown tool ${tool}`, Code.NotFound);
      const { upstream: u, name } = found;
      const destination = `mcp:${u.options.name}`;
      // Arguments are classified as such (the guarded fetch also judges the whole request).
      const out = await deps.classify({ tenant, destination, payload: JSON.stringify(args), signal });
      if (!out.allowed) throw new UpstreamRefusal("egress-blocked", out.reason);
      const result = (await exchange(u, (c) =>
        c.callTool({ name, arguments: args }, undefined, { timeout: u.options.timeoutMs, signal }),
      )) as CallToolResult;
      const back = await deps.classify({
        tenant,
        destination: `${destination}:result`,
        payload: JSON.stringify({ content: result.content, structuredContent: result.structuredContent }),
        signal,
      });
      if (!back.allowed) throw new UpstreamRefusal("result-blocked", back.reason);
      return result;
    },
    async close() {
      for (const list of byTenant.values())
        for (const u of list) await u.client?.then((c) => c.close()).catch(() => undefined);
    },
  };
}

/**
 * Which errors count against an upstream's circuit: it did not answer (network, timeout, 5xx). A call
 * the Egress Guard stopped or the server refused as invalid says nothing about its health.
 */
export function isUpstreamFailure(error: Error): boolean {
  if (error instanceof UpstreamRefusal) return false;
  if (error instanceof ConnectError) return error.code !== Code.PermissionDenied && error.code !== Code.InvalidArgument;
  if (error instanceof McpError)
    return !([ErrorCode.InvalidParams, ErrorCode.MethodNotFound] as number[]).includes(error.code);
  return true;
}
