import { randomUUID } from "node:crypto";
import type * as http from "node:http";
import type * as http2 from "node:http2";
import {
  Code,
  ConnectError,
  createContextValues,
  createHandlerContext,
  type HandlerContext,
} from "@connectrpc/connect";
import { Server } from "@modelcontextprotocol/sdk/server/index.js";
import { StreamableHTTPServerTransport } from "@modelcontextprotocol/sdk/server/streamableHttp.js";
import {
  CallToolRequestSchema,
  ErrorCode,
  LATEST_PROTOCOL_VERSION,
  ListToolsRequestSchema,
  McpError,
  type CallToolResult,
} from "@modelcontextprotocol/sdk/types.js";
import { ROOT_CONTEXT, SpanKind, SpanStatusCode, trace, type Span, type Tracer } from "@opentelemetry/api";
import type { Agent } from "../../gen/nops/kernel/v1/agent_registry_pb.js";
import { RoutingService } from "../../gen/nops/kernel/v1/routing_pb.js";
import type { Clock } from "../common/index.js";
import type { AuditLog } from "../audit/index.js";
import { kPrincipal, type Principal } from "../identity/index.js";
import { derChainFromPeerCertificate, kPeer, type PeerInfo } from "../server/index.js";
import { currentTraceparent, extractTraceContext, type Logger } from "../telemetry/index.js";
import { catalogFingerprint, catalogOf, listedTool, type CatalogTool } from "./tool-catalog.js";
import { MCP_PATH, PROTECTED_RESOURCE_PATH, type McpOptions } from "./mcp-options.js";
import type { ToolPolicies } from "./tool-policies.js";
import { UpstreamRefusal, type Upstreams } from "./upstream-servers.js";
import { BrokenCircuitError } from "cockatiel";

/** Protocol versions served: the current MCP specification and the previous one. */
export const MCP_PROTOCOL_VERSIONS = [LATEST_PROTOCOL_VERSION, "2025-06-18"] as const;

/** What a tools/call sends to the router: an Invoke request. */
export interface ToolInvocation {
  tenant: string;
  capability: string;
  payload: Uint8Array;
  contentType: string;
  idempotent: boolean;
}

/** What the router answered. */
export interface ToolInvocationResult {
  payload: Uint8Array;
  contentType: string;
  agentId: string;
  agentName: string;
  attempts: number;
}

/** Dependencies of the MCP endpoint. */
export interface McpEndpointDeps {
  /** The registry's view: routable agents of a tenant and a change feed. */
  agents: {
    listRoutable(tenant: string, capability: string): Agent[];
    watch(tenant: string, capability: string, signal: AbortSignal): AsyncIterable<unknown>;
  };
  /**
   * Authenticates one HTTP request (the kernel's authn link with the MCP resource as JWT audience);
   * answers the principal or throws the ConnectError authn threw.
   */
  authenticate(ctx: HandlerContext): Promise<Principal | undefined>;
  /** Invoke through the kernel's interceptor chain after authentication (rate limit, authz, router, guard). */
  invoke(request: ToolInvocation, ctx: HandlerContext): Promise<ToolInvocationResult>;
  /** Whether the principal may invoke capabilities of the tenant (authz's answer for RoutingService/Invoke). */
  mayInvoke(principal: Principal, tenant: string): boolean;
  /** Whether the principal's invoke grants cover this tool (a capability, or a namespaced external tool). */
  mayCallTool(principal: Principal, tool: string): boolean;
  /**
   * Spends the rate limit a call to an external tool costs, as Invoke's does (the chain's rate-limit
   * link): throws RESOURCE_EXHAUSTED over the tenant's or address's limit.
   */
  admit(ctx: HandlerContext, tenant: string): Promise<void>;
  /** External MCP servers federated into tenants' catalogs; absent: none. */
  upstreams?: Upstreams;
  /** Call-time argument policies; absent: every call passes. */
  policies?: ToolPolicies;
  audit: AuditLog;
  clock: Clock;
  logger: Logger;
  /** Kernel version, as serverInfo.version. */
  version: string;
  /** Opens a span per tools/call (OTel MCP conventions); absent when tracing is off. */
  tracer?: Tracer;
}

/** The MCP endpoint on the HTTP port. */
export interface McpEndpoint {
  /** Serves POST, GET and DELETE /mcp. */
  handle(
    req: http.IncomingMessage | http2.Http2ServerRequest,
    res: http.ServerResponse | http2.Http2ServerResponse,
  ): void;
  /** Serves the OAuth 2.0 protected resource metadata (RFC 9728). */
  metadata(
    req: http.IncomingMessage | http2.Http2ServerRequest,
    res: http.ServerResponse | http2.Http2ServerResponse,
  ): void;
  /** Open sessions. */
  sessionCount(): number;
  /** Closes every session. */
  close(): Promise<void>;
}

interface Session {
  readonly id: string;
  readonly principalId: string;
  readonly tenant: string;
  readonly transport: StreamableHTTPServerTransport;
  readonly server: Server;
  readonly watch: AbortController;
  lastSeen: number;
}

type NodeReq = http.IncomingMessage | http2.Http2ServerRequest;
type NodeRes = http.ServerResponse | http2.Http2ServerResponse;

// Errors of the chain that describe the call, not the tool: they are JSON-RPC errors. Everything else
// (no agent, agent failed, timed out) is a tool execution error the model can see and react to.
const PROTOCOL_ERRORS = new Set([
  Code.InvalidArgument,
  Code.PermissionDenied,
  Code.Unauthenticated,
  Code.ResourceExhausted,
  Code.FailedPrecondition,
]);
/** JSON-RPC code of a policy or authorization refusal (implementation-defined server error range). */
export const MCP_FORBIDDEN = -32003;
/** JSON-RPC code of a rate-limited call. */
export const MCP_RATE_LIMITED = -32029;

function headerRecord(req: NodeReq): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [name, value] of Object.entries(req.headers)) {
    if (name.startsWith(":") || value === undefined) continue;
    out[name] = Array.isArray(value) ? value.join(", ") : value;
  }
  return out;
}

function readBody(req: NodeReq, maxBytes: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on("data", (chunk: Buffer) => {
      size += chunk.length;
      if (size > maxBytes) {
        reject(new Error("too large"));
        req.destroy();
        return;
      }
      chunks.push(chunk);
    });
    req.on("end", () => resolve(Buffer.concat(chunks)));
    req.on("error", reject);
  });
}

function sendJson(res: NodeRes, status: number, body: unknown, headers: Record<string, string> = {}): void {
  if (res.headersSent) {
    res.end();
    return;
  }
  const text = JSON.stringify(body);
  res.writeHead(status, {
    "content-type": "application/json",
    "cache-control": "no-store",
    "content-length": String(Buffer.byteLength(text)),
    ...headers,
  });
  res.end(text);
}

function jsonRpcError(res: NodeRes, status: number, code: number, message: string, headers?: Record<string, string>) {
  sendJson(res, status, { jsonrpc: "2.0", error: { code, message }, id: null }, headers);
}

function isInitialize(body: unknown): body is { method: "initialize"; params?: { protocolVersion?: unknown } } {
  return typeof body === "object" && body !== null && (body as { method?: unknown }).method === "initialize";
}

/** Reads a W3C trace context from a request's `_meta` (MCP carries no headers of its own per message). */
function metaTrace(meta: unknown): { traceparent?: string; tracestate?: string } {
  if (typeof meta !== "object" || meta === null) return {};
  const m = meta as Record<string, unknown>;
  return {
    traceparent: typeof m.traceparent === "string" ? m.traceparent : undefined,
    tracestate: typeof m.tracestate === "string" ? m.tracestate : undefined,
  };
}

/** Per-request facts the SDK hands to tool handlers as `authInfo.extra`. */
interface RequestFacts {
  principal: Principal;
  peer: PeerInfo;
  headers: Record<string, string>;
  url: string;
}

/**
 * Creates the MCP endpoint: Streamable HTTP with sessions (MCP 2025-11-25 and 2025-06-18), tools/list
 * over the caller's tenant catalog and tools/call through the kernel's chain and router.
 */
export function createMcpEndpoint(
  deps: McpEndpointDeps,
  options: McpOptions & { resource: string; maxMessageBytes: number },
): McpEndpoint {
  const log = deps.logger.child({ component: "mcp" });
  const sessions = new Map<string, Session>();
  const resourceUrl = new URL(options.resource);
  const metadataUrl = new URL(
    PROTECTED_RESOURCE_PATH + (resourceUrl.pathname === "/" ? "" : resourceUrl.pathname),
    resourceUrl,
  ).href;

  const sweeper = setInterval(
    () => {
      const now = deps.clock.now();
      for (const s of sessions.values()) {
        if (now - s.lastSeen > options.sessionIdleMs) {
          log.debug({ session: s.id }, "closing an idle MCP session");
          void closeSession(s);
        }
      }
    },
    Math.min(60_000, options.sessionIdleMs),
  );
  sweeper.unref();

  async function closeSession(s: Session): Promise<void> {
    if (!sessions.delete(s.id)) return;
    s.watch.abort();
    await s.server.close().catch(() => undefined);
  }

  function catalogFor(principal: Principal, tenant: string): Map<string, CatalogTool> {
    if (!deps.mayInvoke(principal, tenant)) return new Map();
    const tools = catalogOf(deps.agents.listRoutable(tenant, ""));
    for (const name of tools.keys()) if (!deps.mayCallTool(principal, name)) tools.delete(name);
    return tools;
  }

  function challenge(error: string | undefined, description: string): Record<string, string> {
    const parts = [`resource_metadata="${metadataUrl}"`];
    if (error) parts.push(`error="${error}"`, `error_description="${description}"`);
    return { "www-authenticate": `Bearer ${parts.join(", ")}` };
  }

  async function callTool(
    facts: RequestFacts,
    session: string | undefined,
    name: string,
    args: Record<string, unknown>,
    meta: unknown,
    signal: AbortSignal,
  ): Promise<CallToolResult> {
    const spanRef: { span?: Span } = {};
    try {
      const result = await runTool(facts, session, name, args, meta, signal, spanRef);
      if (result.isError) spanRef.span?.setStatus({ code: SpanStatusCode.ERROR, message: "tool error" });
      return result;
    } catch (e) {
      spanRef.span?.setStatus({ code: SpanStatusCode.ERROR, message: e instanceof Error ? e.message : "error" });
      throw e;
    } finally {
      spanRef.span?.end();
    }
  }

  async function runTool(
    facts: RequestFacts,
    session: string | undefined,
    name: string,
    args: Record<string, unknown>,
    meta: unknown,
    signal: AbortSignal,
    spanRef: { span?: Span },
  ): Promise<CallToolResult> {
    const { principal } = facts;
    const tenant = principal.tenant!;
    const started = deps.clock.now();
    const audit = (outcome: string, decision: string, extra: Record<string, unknown> = {}) =>
      deps.audit.append({
        actor: principal.id,
        action: "mcp.tools.call",
        tenant,
        resource: `tool/${name}`,
        outcome,
        // Never argument values: the tool, the decision and how long it took.
        details: { tool: name, decision, durationMs: deps.clock.now() - started, session: session ?? "", ...extra },
        correlationId: facts.headers["x-request-id"],
      });
    const tool = catalogFor(principal, tenant).get(name);
    if (
      !tool &&
      deps.upstreams?.owns(tenant, name) &&
      deps.mayInvoke(principal, tenant) &&
      deps.mayCallTool(principal, name)
    ) {
      return callUpstream(deps.upstreams, facts, principal, tenant, name, args, signal, audit);
    }
    if (!tool) {
      audit("denied", "unknown-tool");
      throw new McpError(ErrorCode.InvalidParams, `unknown tool: ${name.slice(0, 128)}`);
    }
    const problem = tool.input?.check(args);
    if (problem !== undefined) {
      audit("denied", "invalid-arguments");
      // MCP 2025-11-25: input validation failures are tool execution errors, so the model can correct them.
      return {
        isError: true,
        content: [{ type: "text", text: `arguments do not match the input schema of ${name}: ${problem}` }],
      };
    }
    const policy = deps.policies?.decide(principal, name, args);
    if (policy && !policy.allowed) {
      audit("denied", "policy", { policy: policy.policy, reason: policy.reason, detail: policy.detail });
      throw new McpError(MCP_FORBIDDEN, `denied by policy ${policy.policy}: ${policy.reason}`, {
        policy: policy.policy,
        reason: policy.reason,
      });
    }
    // One trace from the MCP request to the agent: the parent is `_meta` (per message) or the HTTP
    // headers; the router's Invoke runs as a child of this tool call's span.
    const fromMeta = metaTrace(meta);
    const requestHeader: Record<string, string> = { ...facts.headers };
    if (fromMeta.traceparent) {
      requestHeader.traceparent = fromMeta.traceparent;
      if (fromMeta.tracestate) requestHeader.tracestate = fromMeta.tracestate;
      else delete requestHeader.tracestate;
    }
    const span = deps.tracer?.startSpan(
      `tools/call ${name}`,
      {
        kind: SpanKind.SERVER,
        attributes: {
          "mcp.method.name": "tools/call",
          "gen_ai.tool.name": name,
          "gen_ai.operation.name": "execute_tool",
          ...(session ? { "mcp.session.id": session } : {}),
        },
      },
      extractTraceContext(requestHeader, ROOT_CONTEXT),
    );
    spanRef.span = span;
    if (span) {
      const traceparent = currentTraceparent(trace.setSpan(ROOT_CONTEXT, span));
      if (traceparent) requestHeader.traceparent = traceparent;
    }
    const ctx = createHandlerContext({
      service: RoutingService,
      method: RoutingService.method.invoke,
      protocolName: "mcp",
      requestMethod: "POST",
      url: facts.url,
      requestHeader,
      requestSignal: signal,
      contextValues: createContextValues().set(kPeer, facts.peer).set(kPrincipal, principal),
    });
    let result: ToolInvocationResult;
    try {
      result = await deps.invoke(
        {
          tenant,
          capability: name,
          payload: new TextEncoder().encode(JSON.stringify(args)),
          contentType: "application/json",
          idempotent: false,
        },
        ctx,
      );
    } catch (e) {
      const err = ConnectError.from(e);
      const denied = err.code === Code.PermissionDenied || err.code === Code.Unauthenticated;
      audit(denied ? "denied" : "error", denied ? "refused" : "failed", { code: Code[err.code] });
      if (err.code === Code.ResourceExhausted)
        throw new McpError(MCP_RATE_LIMITED, err.rawMessage, { retryAfter: err.metadata.get("retry-after") });
      if (denied) throw new McpError(MCP_FORBIDDEN, err.rawMessage);
      if (PROTOCOL_ERRORS.has(err.code)) throw new McpError(ErrorCode.InvalidParams, err.rawMessage);
      return { isError: true, content: [{ type: "text", text: `${Code[err.code]}: ${err.rawMessage}` }] };
    }
    const text = new TextDecoder().decode(result.payload);
    const out: CallToolResult = { content: [{ type: "text", text }] };
    if (tool.output) {
      let structured: unknown;
      try {
        structured = JSON.parse(text);
      } catch {
        structured = undefined;
      }
      const mismatch = structured === undefined ? "is not JSON" : (tool.output.check(structured) ?? undefined);
      if (mismatch !== undefined) {
        audit("error", "invalid-result", { agent: result.agentId });
        return {
          isError: true,
          content: [{ type: "text", text: `the agent's result does not match the output schema: ${mismatch}` }],
        };
      }
      out.structuredContent = structured as Record<string, unknown>;
    }
    audit("ok", "allowed", { agent: result.agentId, attempts: result.attempts });
    return out;
  }

  async function callUpstream(
    upstreams: Upstreams,
    facts: RequestFacts,
    principal: Principal,
    tenant: string,
    name: string,
    args: Record<string, unknown>,
    signal: AbortSignal,
    audit: (outcome: string, decision: string, extra?: Record<string, unknown>) => void,
  ): Promise<CallToolResult> {
    const policy = deps.policies?.decide(principal, name, args);
    if (policy && !policy.allowed) {
      audit("denied", "policy", { policy: policy.policy, reason: policy.reason, detail: policy.detail });
      throw new McpError(MCP_FORBIDDEN, `denied by policy ${policy.policy}: ${policy.reason}`, {
        policy: policy.policy,
        reason: policy.reason,
      });
    }
    const ctx = createHandlerContext({
      service: RoutingService,
      method: RoutingService.method.invoke,
      protocolName: "mcp",
      requestMethod: "POST",
      url: facts.url,
      requestHeader: new Headers(),
      requestSignal: signal,
      contextValues: createContextValues().set(kPeer, facts.peer).set(kPrincipal, principal),
    });
    try {
      await deps.admit(ctx, tenant);
    } catch (e) {
      const err = ConnectError.from(e);
      audit("denied", "rate-limited", { code: Code[err.code], upstream: true });
      if (err.code === Code.ResourceExhausted)
        throw new McpError(MCP_RATE_LIMITED, err.rawMessage, { retryAfter: err.metadata.get("retry-after") });
      throw new McpError(MCP_FORBIDDEN, err.rawMessage);
    }
    try {
      const result = await upstreams.call(tenant, name, args, signal);
      audit("ok", "allowed", { upstream: true });
      return result;
    } catch (e) {
      if (e instanceof UpstreamRefusal) {
        audit("denied", e.decision, { reason: e.reason, upstream: true });
        throw new McpError(MCP_FORBIDDEN, `blocked by the egress guard (${e.reason})`, { reason: e.reason });
      }
      const denied = e instanceof ConnectError && e.code === Code.PermissionDenied;
      if (denied) {
        audit("denied", "egress-blocked", { reason: e.rawMessage, upstream: true });
        throw new McpError(MCP_FORBIDDEN, `blocked by the egress guard (${e.rawMessage})`);
      }
      const open = e instanceof BrokenCircuitError;
      audit("error", open ? "circuit-open" : "failed", { upstream: true });
      return {
        isError: true,
        content: [
          {
            type: "text",
            text: open
              ? "external MCP server unavailable (circuit open); retry later"
              : `external MCP server failed: ${e instanceof Error ? e.message.slice(0, 200) : "error"}`,
          },
        ],
      };
    }
  }

  function newServer(tenant: string): Server {
    const server = new Server(
      { name: "nops-kernel", title: "NOPS Kernel", version: deps.version },
      {
        capabilities: { tools: { listChanged: true } },
        instructions: `Tools are the capabilities of tenant ${tenant} at this edge; each call is routed to a live agent.`,
      },
    );
    const factsOf = (extra: { authInfo?: { extra?: Record<string, unknown> } }): RequestFacts => {
      const facts = extra.authInfo?.extra?.facts as RequestFacts | undefined;
      // Every request reaches the transport only after authentication put its facts here.
      if (!facts) throw new McpError(ErrorCode.InternalError, "request without authentication facts");
      return facts;
    };
    server.setRequestHandler(ListToolsRequestSchema, async (_req, extra) => {
      const { principal } = factsOf(extra);
      const tenant = principal.tenant!;
      const local = catalogFor(principal, tenant);
      const tools = [...local.values()].map(listedTool);
      if (deps.upstreams && deps.mayInvoke(principal, tenant)) {
        // A capability of the tenant's own agents wins over an external tool of the same name.
        for (const tool of await deps.upstreams.tools(tenant))
          if (!local.has(tool.name) && deps.mayCallTool(principal, tool.name)) tools.push(tool);
      }
      return { tools };
    });
    server.setRequestHandler(CallToolRequestSchema, (req, extra) =>
      callTool(
        factsOf(extra),
        extra.sessionId,
        req.params.name,
        req.params.arguments ?? {},
        req.params._meta,
        extra.signal,
      ),
    );
    return server;
  }

  // notifications/tools/list_changed when the tenant's listing changes (not on every heartbeat).
  function watchCatalog(session: Session, principal: Principal): void {
    let last = catalogFingerprint(catalogFor(principal, session.tenant));
    void (async () => {
      try {
        for await (const _change of deps.agents.watch(session.tenant, "", session.watch.signal)) {
          const now = catalogFingerprint(catalogFor(principal, session.tenant));
          if (now === last) continue;
          last = now;
          await session.server.sendToolListChanged().catch(() => undefined);
        }
      } catch (e) {
        if (!session.watch.signal.aborted) log.warn({ err: e, session: session.id }, "MCP catalog watch ended");
      }
    })();
  }

  async function authenticate(req: NodeReq, res: NodeRes): Promise<RequestFacts | undefined> {
    const headers = headerRecord(req);
    const peer: PeerInfo = {
      address: `${req.socket.remoteAddress ?? ""}:${req.socket.remotePort ?? ""}`,
      transport: "connect-node",
      certificates: [],
    };
    const tlsSocket = req.socket as { getPeerCertificate?: (detailed: boolean) => unknown };
    if (typeof tlsSocket.getPeerCertificate === "function")
      peer.certificates = derChainFromPeerCertificate(
        tlsSocket.getPeerCertificate(true) as Parameters<typeof derChainFromPeerCertificate>[0],
      );
    const url = `${resourceUrl.origin}${req.url ?? MCP_PATH}`;
    const ctx = createHandlerContext({
      service: RoutingService,
      method: RoutingService.method.invoke,
      protocolName: "mcp",
      requestMethod: req.method ?? "POST",
      url,
      requestHeader: headers,
      contextValues: createContextValues().set(kPeer, peer),
    });
    let principal: Principal | undefined;
    try {
      principal = await deps.authenticate(ctx);
    } catch (e) {
      const err = ConnectError.from(e);
      if (err.code === Code.ResourceExhausted) {
        jsonRpcError(res, 429, MCP_RATE_LIMITED, "too many failed authentications", {
          "retry-after": ctx.responseHeader.get("retry-after") ?? "1",
        });
        return undefined;
      }
      const presented = "authorization" in headers || "x-api-key" in headers;
      // MCP authorization §"Error Handling": an invalid token, including one for another audience, is 401.
      jsonRpcError(
        res,
        401,
        ErrorCode.InvalidRequest,
        "unauthenticated",
        challenge(presented ? "invalid_token" : undefined, "the credential is not valid for this resource"),
      );
      return undefined;
    }
    if (!principal) {
      jsonRpcError(res, 401, ErrorCode.InvalidRequest, "unauthenticated", challenge(undefined, ""));
      return undefined;
    }
    if (principal.tenant === undefined) {
      // MCP lists one tenant's tools: an all-tenants administrator needs a tenant-bound credential here.
      jsonRpcError(res, 403, MCP_FORBIDDEN, "MCP needs a credential bound to one tenant", {
        "www-authenticate": `Bearer resource_metadata="${metadataUrl}", error="insufficient_scope"`,
      });
      return undefined;
    }
    return { principal, peer, headers, url };
  }

  async function serve(req: NodeReq, res: NodeRes): Promise<void> {
    const method = req.method ?? "";
    if (method !== "POST" && method !== "GET" && method !== "DELETE") {
      jsonRpcError(res, 405, ErrorCode.InvalidRequest, "method not allowed", { allow: "GET, POST, DELETE" });
      return;
    }
    // DNS rebinding: a browser page of another origin must not reach the endpoint (MCP transports).
    const origin = req.headers.origin;
    if (typeof origin === "string" && origin !== resourceUrl.origin && !options.allowedOrigins.includes(origin)) {
      jsonRpcError(res, 403, ErrorCode.InvalidRequest, "origin: not allowed");
      return;
    }
    const facts = await authenticate(req, res);
    if (!facts) return;
    const version = req.headers["mcp-protocol-version"];
    if (typeof version === "string" && !(MCP_PROTOCOL_VERSIONS as readonly string[]).includes(version)) {
      jsonRpcError(
        res,
        400,
        ErrorCode.InvalidRequest,
        `unsupported MCP-Protocol-Version ${version.slice(0, 40)}; supported: ${MCP_PROTOCOL_VERSIONS.join(", ")}`,
      );
      return;
    }
    let body: unknown = undefined;
    if (method === "POST") {
      let raw: Buffer;
      try {
        raw = await readBody(req, options.maxMessageBytes);
      } catch {
        jsonRpcError(res, 413, ErrorCode.InvalidRequest, `body: must be at most ${options.maxMessageBytes} bytes`);
        return;
      }
      try {
        body = JSON.parse(raw.toString("utf8"));
      } catch {
        jsonRpcError(res, 400, ErrorCode.ParseError, "body: not JSON");
        return;
      }
    }
    const authInfo = { token: "", clientId: facts.principal.id, scopes: [...facts.principal.scopes], extra: { facts } };
    const request = Object.assign(req, { auth: authInfo }) as http.IncomingMessage & { auth: typeof authInfo };
    const sessionId = req.headers["mcp-session-id"];
    if (typeof sessionId === "string") {
      const session = sessions.get(sessionId);
      // Another principal's session is answered as unknown: session ids are not credentials.
      if (!session || session.principalId !== facts.principal.id) {
        jsonRpcError(res, 404, ErrorCode.InvalidRequest, "session not found");
        return;
      }
      session.lastSeen = deps.clock.now();
      await session.transport.handleRequest(request, res as http.ServerResponse, body);
      return;
    }
    if (method !== "POST" || !isInitialize(body)) {
      jsonRpcError(res, 400, ErrorCode.InvalidRequest, "mcp-session-id: required after initialize");
      return;
    }
    if (sessions.size >= options.maxSessions) {
      jsonRpcError(res, 503, ErrorCode.InternalError, "too many MCP sessions", { "retry-after": "5" });
      return;
    }
    // Version negotiation (MCP lifecycle): a version not served is answered with the latest.
    const params = body.params;
    if (params && !(MCP_PROTOCOL_VERSIONS as readonly unknown[]).includes(params.protocolVersion))
      params.protocolVersion = LATEST_PROTOCOL_VERSION;
    const tenant = facts.principal.tenant!;
    const server = newServer(tenant);
    const principal = facts.principal;
    const transport: StreamableHTTPServerTransport = new StreamableHTTPServerTransport({
      sessionIdGenerator: () => randomUUID(),
      onsessioninitialized: (id) => {
        const session: Session = {
          id,
          principalId: principal.id,
          tenant,
          transport,
          server,
          watch: new AbortController(),
          lastSeen: deps.clock.now(),
        };
        sessions.set(id, session);
        watchCatalog(session, principal);
      },
      onsessionclosed: (id) => {
        const s = sessions.get(id);
        if (s) void closeSession(s);
      },
    });
    transport.onclose = () => {
      const id = transport.sessionId;
      const s = id === undefined ? undefined : sessions.get(id);
      if (s) void closeSession(s);
    };
    await server.connect(transport);
    await transport.handleRequest(request, res as http.ServerResponse, body);
  }

  return {
    handle(req, res) {
      serve(req, res).catch((e: unknown) => {
        log.error({ err: e }, "MCP request failed");
        if (!res.headersSent) jsonRpcError(res, 500, ErrorCode.InternalError, "internal error");
        else res.end();
      });
    },
    metadata(req, res) {
      if (req.method !== "GET" && req.method !== "HEAD") {
        sendJson(res, 405, { error: "method not allowed" }, { allow: "GET" });
        return;
      }
      sendJson(res, 200, {
        resource: options.resource,
        authorization_servers: options.authorizationServers,
        bearer_methods_supported: ["header"],
        resource_name: "NOPS Kernel MCP",
      });
    },
    sessionCount: () => sessions.size,
    close: async () => {
      clearInterval(sweeper);
      await Promise.all([...sessions.values()].map((s) => closeSession(s)));
    },
  };
}
