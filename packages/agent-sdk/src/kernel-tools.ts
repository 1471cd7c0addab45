import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { ToolListChangedNotificationSchema, type CallToolResult, type Tool } from "@modelcontextprotocol/sdk/types.js";
import { context } from "@opentelemetry/api";
import { W3CTraceContextPropagator } from "@opentelemetry/core";

/** How to reach the kernel's MCP endpoint. */
export interface KernelToolsOptions {
  /** The kernel's MCP endpoint, e.g. "https://kernel.example:8080/mcp". */
  url: string;
  /** An OAuth bearer token whose audience is the MCP resource (the endpoint's URL, or `mcp.resource`). */
  bearerToken?: string;
  /** Or a kernel API key (sent as x-api-key). */
  apiKey?: string;
  /** clientInfo.name in initialize. @default "nops-agent-sdk" */
  clientName?: string;
  /** fetch to use (e.g. one with an mTLS dispatcher for SVID authentication). @default global fetch */
  fetch?: typeof fetch;
}

/** Options of one tool call. */
export interface ToolCallOptions {
  signal?: AbortSignal;
  /** Longest wait for the answer, ms. @default 60000 (the MCP client's default) */
  timeoutMs?: number;
}

/** The kernel's tools: the capabilities of the caller's tenant (and federated external MCP servers). */
export interface KernelTools {
  /** Every tool, following pagination. */
  listTools(): Promise<Tool[]>;
  /** Calls a tool; a tool execution error comes back as `isError: true`, a refusal (policy, egress) throws McpError. */
  callTool(name: string, args?: Record<string, unknown>, options?: ToolCallOptions): Promise<CallToolResult>;
  /** Called when the tenant's catalog changes (notifications/tools/list_changed). */
  onToolsChanged(listener: () => void): void;
  /** The official MCP client underneath, for anything else. */
  readonly client: Client;
  close(): Promise<void>;
}

const w3c = new W3CTraceContextPropagator();

/**
 * Connects to the kernel's MCP endpoint with the official MCP TypeScript client (Streamable HTTP).
 * Each call carries the active OpenTelemetry trace in `_meta.traceparent`, so the kernel's spans and
 * the agent's join the caller's trace.
 */
export async function connectKernelTools(options: KernelToolsOptions): Promise<KernelTools> {
  if (options.bearerToken && options.apiKey)
    throw new TypeError("connectKernelTools: give bearerToken or apiKey, not both");
  const headers: Record<string, string> = {};
  if (options.bearerToken) headers.authorization = `Bearer ${options.bearerToken}`;
  if (options.apiKey) headers["x-api-key"] = options.apiKey;
  const client = new Client({ name: options.clientName ?? "nops-agent-sdk", version: "1" }, { capabilities: {} });
  await client.connect(
    new StreamableHTTPClientTransport(new URL(options.url), {
      requestInit: { headers },
      ...(options.fetch ? { fetch: options.fetch } : {}),
    }),
  );
  const listeners: (() => void)[] = [];
  client.setNotificationHandler(ToolListChangedNotificationSchema, () => {
    for (const l of listeners) l();
  });
  return {
    client,
    async listTools() {
      const tools: Tool[] = [];
      let cursor: string | undefined;
      do {
        const page = await client.listTools(cursor === undefined ? undefined : { cursor });
        tools.push(...page.tools);
        cursor = page.nextCursor;
      } while (cursor);
      return tools;
    },
    async callTool(name, args = {}, callOptions = {}) {
      const meta: Record<string, string> = {};
      w3c.inject(context.active(), meta, { set: (c: Record<string, string>, k: string, v: string) => void (c[k] = v) });
      return (await client.callTool(
        { name, arguments: args, ...(meta.traceparent ? { _meta: meta } : {}) },
        undefined,
        { signal: callOptions.signal, timeout: callOptions.timeoutMs },
      )) as CallToolResult;
    },
    onToolsChanged(listener) {
      listeners.push(listener);
    },
    close: () => client.close(),
  };
}
