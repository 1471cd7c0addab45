import { fileURLToPath } from "node:url";
import test, { type ExecutionContext } from "ava";
import Database from "better-sqlite3";
import { SignJWT } from "jose";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { McpError } from "@modelcontextprotocol/sdk/types.js";
import { MCP_FORBIDDEN, MCP_RATE_LIMITED } from "../../src/mcp/index.js";
import { startTestKernel } from "../helpers/kernel.js";
import { spawnChild, waitFor, type Child } from "../helpers/processes.js";

const SECRET = "mcp-test-secret-of-at-least-32-bytes!!";
const SERVER = fileURLToPath(new URL("./fixtures/external-mcp-server.ts", import.meta.url));

async function startExternal(t: ExecutionContext, port = 0): Promise<{ child: Child; port: number }> {
  const child = spawnChild(t, process.execPath, ["--import", "tsx", SERVER, "--port", String(port)], {});
  await waitFor(() => /READY \d+/.test(child.output()), "the external MCP server to listen", 30_000);
  return { child, port: Number(/READY (\d+)/.exec(child.output())![1]) };
}

const text = (r: unknown) => (r as { content?: { text?: string }[] }).content?.[0]?.text ?? "";

test("mcp gateway - an external MCP server is federated into the tenant's catalog, guarded, and isolated by a breaker", async (t) => {
  let external = await startExternal(t);
  const k = await startTestKernel(t, {
    identity: {
      source: "none",
      jwt: { issuer: "https://idp.test", audience: "nops", algorithms: ["HS256"], hmacSecret: SECRET },
    },
    // acme is tier 3: no PII may leave the edge.
    egress: { tenantTiers: { acme: 3 } },
    routing: { circuitBreaker: { consecutiveFailures: 2, halfOpenAfterMs: 1000 } },
    mcp: {
      upstreams: [
        { name: "crm", tenant: "acme", url: `http://127.0.0.1:${external.port}/mcp`, timeoutMs: 5000, listTtlMs: 0 },
      ],
    },
  });
  const url = `http://127.0.0.1:${k.kernel.httpPort}/mcp`;
  const connect = async (tenant: string) => {
    const bearer = await new SignJWT({ roles: ["OPERATOR"], tenant })
      .setProtectedHeader({ alg: "HS256" })
      .setIssuer("https://idp.test")
      .setAudience(url)
      .setSubject(`user-${tenant}`)
      .setIssuedAt()
      .setExpirationTime("10m")
      .sign(new TextEncoder().encode(SECRET));
    const client = new Client({ name: "gateway-test", version: "1" });
    await client.connect(
      new StreamableHTTPClientTransport(new URL(url), {
        requestInit: { headers: { authorization: `Bearer ${bearer}` } },
      }),
    );
    t.teardown(() => client.close());
    return client;
  };
  const client = await connect("acme");

  const { tools } = await client.listTools();
  t.deepEqual(
    tools.map((tool) => tool.name),
    ["crm__lookup"],
  );
  t.deepEqual(tools[0]!.inputSchema.required, ["query"]);
  // Another tenant does not see acme's upstream.
  t.deepEqual((await (await connect("globex")).listTools()).tools, []);

  const ok = await client.callTool({ name: "crm__lookup", arguments: { query: "acme-42" } });
  t.is(text(ok), "found customer for acme-42");

  // PII in the arguments never leaves: the guard blocks it and the external server sees nothing.
  const blocked = await t.throwsAsync(
    client.callTool({ name: "crm__lookup", arguments: { query: "jane.doe@example.com SSN 123-45-6789" } }),
  );
  t.true(blocked instanceof McpError, String(blocked));
  t.is((blocked as McpError).code, MCP_FORBIDDEN);
  t.regex(blocked.message, /egress guard/);
  t.is(external.child.output().match(/^CALL /gm)?.length, 1, "only the clean call reached the external server");
  // A result carrying PII is classified before it is returned, and withheld.
  const leak = await t.throwsAsync(client.callTool({ name: "crm__lookup", arguments: { query: "acme-leak" } }));
  t.is((leak as McpError).code, MCP_FORBIDDEN);
  t.regex(leak.message, /egress guard/);
  const db = new Database(k.kernel.options.databasePath, { readonly: true });
  t.teardown(() => db.close());
  const denied = db
    .prepare("SELECT details FROM audit_log WHERE action = 'mcp.tools.call' AND outcome = 'denied'")
    .all() as { details: string }[];
  t.deepEqual(
    denied.map((d) => (JSON.parse(d.details) as { decision: string; tool: string }).decision),
    ["egress-blocked", "result-blocked"],
  );
  for (const d of denied) t.false(d.details.includes("jane"), "values are never audited");
  const egress = db.prepare("SELECT count(*) AS n FROM audit_log WHERE action LIKE 'egress.%'").get() as { n: number };
  t.true(egress.n >= 1, "the guard audited the block");

  // Killing the external server trips the breaker: after two failures, calls fail fast.
  external.child.proc.kill("SIGKILL");
  await external.child.exited;
  for (let i = 0; i < 2; i++) {
    const failed = await client.callTool({ name: "crm__lookup", arguments: { query: "acme-1" } });
    t.true(failed.isError);
    t.regex(text(failed), /external MCP server failed/);
  }
  const open = await client.callTool({ name: "crm__lookup", arguments: { query: "acme-1" } });
  t.true(open.isError);
  t.regex(text(open), /circuit open/);

  // Back on the same port, the half-open probe closes the circuit again.
  external = await startExternal(t, external.port);
  let recovered = "";
  await waitFor(
    async () => {
      recovered = text(await client.callTool({ name: "crm__lookup", arguments: { query: "acme-7" } }));
      return recovered === "found customer for acme-7";
    },
    "the breaker to close after the server returned",
    30_000,
    250,
  );
  t.is(recovered, "found customer for acme-7");
});

test("mcp gateway - calls to an external tool spend the tenant's rate limit like Invoke", async (t) => {
  const external = await startExternal(t);
  const k = await startTestKernel(t, {
    identity: {
      source: "none",
      jwt: { issuer: "https://idp.test", audience: "nops", algorithms: ["HS256"], hmacSecret: SECRET },
    },
    egress: { tenantTiers: { acme: 1 } },
    // Two calls a minute for acme.
    rateLimit: { tenantTiers: { acme: 1 }, tierLimits: { 1: 2 }, tenantWindowMs: 60_000 },
    mcp: {
      upstreams: [
        { name: "crm", tenant: "acme", url: `http://127.0.0.1:${external.port}/mcp`, timeoutMs: 5000, listTtlMs: 0 },
      ],
    },
  });
  const url = `http://127.0.0.1:${k.kernel.httpPort}/mcp`;
  const bearer = await new SignJWT({ roles: ["OPERATOR"], tenant: "acme" })
    .setProtectedHeader({ alg: "HS256" })
    .setIssuer("https://idp.test")
    .setAudience(url)
    .setSubject("user-acme")
    .setIssuedAt()
    .setExpirationTime("10m")
    .sign(new TextEncoder().encode(SECRET));
  const client = new Client({ name: "gateway-test", version: "1" });
  await client.connect(
    new StreamableHTTPClientTransport(new URL(url), {
      requestInit: { headers: { authorization: `Bearer ${bearer}` } },
    }),
  );
  t.teardown(() => client.close());
  for (const query of ["acme-1", "acme-2"])
    t.is(text(await client.callTool({ name: "crm__lookup", arguments: { query } })), `found customer for ${query}`);
  const limited = await t.throwsAsync(client.callTool({ name: "crm__lookup", arguments: { query: "acme-3" } }));
  t.true(limited instanceof McpError, String(limited));
  t.is((limited as McpError).code, MCP_RATE_LIMITED);
  t.is(external.child.output().match(/^CALL /gm)?.length, 2, "the refused call never reached the external server");
});
