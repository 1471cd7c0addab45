import test from "ava";
import Database from "better-sqlite3";
import { SignJWT } from "jose";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { McpError, ToolListChangedNotificationSchema } from "@modelcontextprotocol/sdk/types.js";
import { Code, ConnectError } from "@connectrpc/connect";
import { AgentRegistryService } from "../../gen/nops/kernel/v1/agent_registry_pb.js";
import { startTestKernel } from "../helpers/kernel.js";
import { spawnEchoAgent } from "../routing/fixtures/spawn-echo-agent.js";
import { startEchoAgent } from "../routing/fixtures/echo-agent.js";
import { MCP_FORBIDDEN } from "../../src/mcp/index.js";

const SECRET = "mcp-test-secret-of-at-least-32-bytes!!";
const ISSUER = "https://idp.test";

async function token(claims: Record<string, unknown>, audience: string): Promise<string> {
  return new SignJWT({ roles: ["OPERATOR"], tenant: "acme", ...claims })
    .setProtectedHeader({ alg: "HS256" })
    .setIssuer(ISSUER)
    .setAudience(audience)
    .setSubject(typeof claims.sub === "string" ? claims.sub : "mcp-user")
    .setIssuedAt()
    .setExpirationTime("10m")
    .sign(new TextEncoder().encode(SECRET));
}

const jwtConfig = {
  source: "none",
  jwt: { issuer: ISSUER, audience: "nops", algorithms: ["HS256"], hmacSecret: SECRET },
};

const INPUT_SCHEMA = JSON.stringify({
  type: "object",
  properties: { customer: { type: "string", pattern: "^c-[0-9]+$" } },
  required: ["customer"],
  additionalProperties: false,
});

async function connect(url: string, bearer: string): Promise<Client> {
  const client = new Client({ name: "mcp-test", version: "1.0.0" });
  await client.connect(
    new StreamableHTTPClientTransport(new URL(url), {
      requestInit: { headers: { authorization: `Bearer ${bearer}` } },
    }),
  );
  return client;
}

test("mcp endpoint - official client lists and calls tools answered by a real agent; list_changed on register", async (t) => {
  const agent = await spawnEchoAgent({ name: "echo-mcp" });
  t.teardown(() => agent.kill());
  const k = await startTestKernel(t, { identity: jwtConfig });
  const url = `http://127.0.0.1:${k.kernel.httpPort}/mcp`;
  const registry = k.client(AgentRegistryService, "connect-json");
  await registry.registerAgent({
    tenant: "acme",
    name: "lookup",
    version: "1",
    endpoint: agent.endpoint,
    capabilities: [{ name: "customer.lookup", version: "1", inputSchema: INPUT_SCHEMA }],
  });
  // Another tenant's capability never shows up in acme's catalog.
  await registry.registerAgent({
    tenant: "globex",
    name: "other",
    version: "1",
    endpoint: agent.endpoint,
    capabilities: [{ name: "globex.secret" }],
  });

  const client = await connect(url, await token({}, url));
  t.teardown(() => client.close());
  t.is(client.getServerVersion()?.name, "nops-kernel");
  t.truthy(client.getServerCapabilities()?.tools?.listChanged);

  const listed = await client.listTools();
  t.deepEqual(
    listed.tools.map((tool) => tool.name),
    ["customer.lookup"],
  );
  t.deepEqual(listed.tools[0]!.inputSchema, JSON.parse(INPUT_SCHEMA));

  const result = await client.callTool({ name: "customer.lookup", arguments: { customer: "c-42" } });
  t.falsy(result.isError, JSON.stringify(result));
  t.deepEqual(JSON.parse((result.content as { text: string }[])[0]!.text), { customer: "c-42" }, "the agent echoed");

  // Schema-invalid arguments are refused before any agent is called.
  const invalid = await client.callTool({ name: "customer.lookup", arguments: { customer: "DROP TABLE" } });
  t.true(invalid.isError);
  t.regex((invalid.content as { text: string }[])[0]!.text, /input schema.*customer/);

  const changed = new Promise<void>((resolve) =>
    client.setNotificationHandler(ToolListChangedNotificationSchema, () => resolve()),
  );
  await registry.registerAgent({
    tenant: "acme",
    name: "summarizer",
    version: "1",
    endpoint: agent.endpoint,
    capabilities: [{ name: "summarize" }],
  });
  await changed;
  const after = await client.listTools();
  t.deepEqual(after.tools.map((tool) => tool.name).sort(), ["customer.lookup", "summarize"]);

  const db = new Database(k.kernel.options.databasePath, { readonly: true });
  t.teardown(() => db.close());
  const rows = db
    .prepare(
      "SELECT actor, tenant, resource, outcome, details FROM audit_log WHERE action = 'mcp.tools.call' ORDER BY seq",
    )
    .all() as { actor: string; tenant: string; resource: string; outcome: string; details: string }[];
  t.deepEqual(
    rows.map((r) => [
      r.actor,
      r.tenant,
      r.resource,
      r.outcome,
      (JSON.parse(r.details) as { decision: string }).decision,
    ]),
    [
      ["jwt:mcp-user", "acme", "tool/customer.lookup", "ok", "allowed"],
      ["jwt:mcp-user", "acme", "tool/customer.lookup", "denied", "invalid-arguments"],
    ],
  );
  for (const r of rows) {
    // Quoted: the details hold a random request id, and a UUID can contain c-42 (…c-42…) by chance.
    t.false(r.details.includes('"c-42"'), "argument values are never audited");
    t.false(r.details.includes("DROP TABLE"), "argument values are never audited");
    t.is(typeof (JSON.parse(r.details) as { durationMs: unknown }).durationMs, "number");
  }
});

test("mcp endpoint - unauthenticated is 401 with WWW-Authenticate; another audience is refused", async (t) => {
  const k = await startTestKernel(t, { identity: jwtConfig });
  const url = `http://127.0.0.1:${k.kernel.httpPort}/mcp`;
  const init = {
    jsonrpc: "2.0",
    id: 1,
    method: "initialize",
    params: { protocolVersion: "2025-11-25", capabilities: {}, clientInfo: { name: "curl", version: "1" } },
  };
  const post = (headers: Record<string, string>) =>
    fetch(url, {
      method: "POST",
      headers: { "content-type": "application/json", accept: "application/json, text/event-stream", ...headers },
      body: JSON.stringify(init),
    });

  const anonymous = await post({});
  t.is(anonymous.status, 401);
  const metadataUrl = `http://127.0.0.1:${k.kernel.httpPort}/.well-known/oauth-protected-resource/mcp`;
  t.is(anonymous.headers.get("www-authenticate"), `Bearer resource_metadata="${metadataUrl}"`);

  const metadata = (await (await fetch(metadataUrl)).json()) as Record<string, unknown>;
  t.is(metadata.resource, url);
  t.deepEqual(metadata.authorization_servers, [ISSUER]);
  t.deepEqual(metadata.bearer_methods_supported, ["header"]);

  // A genuine token minted for the kernel's RPCs ("nops") is not a token for the MCP resource.
  const kernelToken = await token({}, "nops");
  const wrong = await post({ authorization: `Bearer ${kernelToken}` });
  t.is(wrong.status, 401);
  t.regex(wrong.headers.get("www-authenticate") ?? "", /error="invalid_token"/);
  await t.throwsAsync(connect(url, kernelToken));

  // ...and an MCP token is not a token for the kernel's RPCs.
  const mcpToken = await token({}, url);
  const registry = k.client(AgentRegistryService, "connect-json");
  const err = await t.throwsAsync(
    registry.listAgents({ tenant: "acme", pageSize: 10 }, { headers: { authorization: `Bearer ${mcpToken}` } }),
  );
  t.is(ConnectError.from(err).code, Code.PermissionDenied);

  // DNS rebinding: another origin is refused even with a valid token.
  const foreign = await post({ authorization: `Bearer ${mcpToken}`, origin: "http://evil.example" });
  t.is(foreign.status, 403);
  await foreign.body?.cancel();

  const ok = await post({ authorization: `Bearer ${mcpToken}`, origin: `http://127.0.0.1:${k.kernel.httpPort}` });
  t.is(ok.status, 200);
  t.truthy(ok.headers.get("mcp-session-id"));
  await ok.body?.cancel();

  // An unserved protocol version is answered with the latest (MCP lifecycle, version negotiation).
  const old = await fetch(url, {
    method: "POST",
    headers: {
      "content-type": "application/json",
      accept: "application/json, text/event-stream",
      authorization: `Bearer ${mcpToken}`,
    },
    body: JSON.stringify({ ...init, params: { ...init.params, protocolVersion: "2024-11-05" } }),
  });
  t.regex(await old.text(), /"protocolVersion":"2025-11-25"/);
});

test("mcp endpoint - a session belongs to the principal that opened it", async (t) => {
  const k = await startTestKernel(t, { identity: jwtConfig });
  const url = `http://127.0.0.1:${k.kernel.httpPort}/mcp`;
  const alice = await connect(url, await token({}, url));
  t.teardown(() => alice.close());
  const sessionId = (alice.transport as StreamableHTTPClientTransport).sessionId!;
  const mallory = await token({ sub: "mallory" }, url);
  const res = await fetch(url, {
    method: "POST",
    headers: {
      "content-type": "application/json",
      accept: "application/json, text/event-stream",
      authorization: `Bearer ${mallory}`,
      "mcp-session-id": sessionId,
      "mcp-protocol-version": "2025-11-25",
    },
    body: JSON.stringify({ jsonrpc: "2.0", id: 2, method: "tools/list" }),
  });
  t.is(res.status, 404);
});

test("mcp endpoint - a CEL policy denial is an MCP error with the reason, audited, and no agent is called", async (t) => {
  const agent = await startEchoAgent({ name: "policed" });
  t.teardown(() => agent.close());
  const k = await startTestKernel(t, {
    identity: jwtConfig,
    mcp: {
      policies: [
        {
          name: "own-customers",
          tool: "customer.lookup",
          allow: 'args.customer.startsWith("c-" + principal.tenant)',
          reason: "a tenant may only query its own customer ids",
        },
      ],
    },
  });
  const url = `http://127.0.0.1:${k.kernel.httpPort}/mcp`;
  await k.client(AgentRegistryService, "connect-json").registerAgent({
    tenant: "acme",
    name: "lookup",
    version: "1",
    endpoint: `127.0.0.1:${agent.port}`,
    capabilities: [{ name: "customer.lookup" }],
  });
  const client = await connect(url, await token({}, url));
  t.teardown(() => client.close());
  const ok = await client.callTool({ name: "customer.lookup", arguments: { customer: "c-acme-1" } });
  t.falsy(ok.isError);
  const err = await t.throwsAsync(client.callTool({ name: "customer.lookup", arguments: { customer: "c-globex-1" } }));
  t.true(err instanceof McpError);
  t.is((err as McpError).code, MCP_FORBIDDEN);
  t.regex(err.message, /denied by policy own-customers: a tenant may only query its own customer ids/);
  t.is(agent.stats.calls, 1, "the denied call never reached the agent");
  const db = new Database(k.kernel.options.databasePath, { readonly: true });
  t.teardown(() => db.close());
  const row = db
    .prepare("SELECT outcome, details FROM audit_log WHERE action = 'mcp.tools.call' AND outcome = 'denied'")
    .get() as { outcome: string; details: string };
  t.like(JSON.parse(row.details) as object, { decision: "policy", policy: "own-customers", tool: "customer.lookup" });
  t.false(row.details.includes("globex"), "argument values are never audited");
});

test("mcp endpoint - an agent's invoke grants narrow its tools: tools/list and tools/call leave the others out", async (t) => {
  const agent = await spawnEchoAgent({ name: "echo-mcp-grants" });
  t.teardown(() => agent.kill());
  const k = await startTestKernel(t, { identity: jwtConfig });
  const url = `http://127.0.0.1:${k.kernel.httpPort}/mcp`;
  const registry = k.client(AgentRegistryService, "connect-json");
  for (const name of ["customer.lookup", "summarize"])
    await registry.registerAgent({
      tenant: "acme",
      name: name.replace(".", "-"),
      version: "1",
      endpoint: agent.endpoint,
      capabilities: [{ name }],
    });
  const client = await connect(url, await token({ roles: ["AGENT"], invoke: ["customer.*"] }, url));
  t.teardown(() => client.close());
  const listed = await client.listTools();
  t.deepEqual(
    listed.tools.map((tool) => tool.name),
    ["customer.lookup"],
  );
  const granted = await client.callTool({ name: "customer.lookup", arguments: { customer: "c-1" } });
  t.falsy(granted.isError, JSON.stringify(granted));
  const err = await t.throwsAsync(client.callTool({ name: "summarize", arguments: {} }));
  t.regex(err?.message ?? "", /unknown tool: summarize/);
});
