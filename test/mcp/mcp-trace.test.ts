// Its own file: a kernel with tracing registers the OpenTelemetry globals for its process.
import test from "ava";
import { SignJWT } from "jose";
import { ExportResultCode } from "@opentelemetry/core";
import type { ReadableSpan, SpanExporter } from "@opentelemetry/sdk-trace-base";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { AgentRegistryService } from "../../gen/nops/kernel/v1/agent_registry_pb.js";
import { startTestKernel } from "../helpers/kernel.js";
import { startEchoAgent } from "../routing/fixtures/echo-agent.js";

const SECRET = "mcp-test-secret-of-at-least-32-bytes!!";
const TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736";

test("mcp tracing - one trace from the MCP request's _meta through the tool call and Invoke to the agent", async (t) => {
  const agent = await startEchoAgent({ name: "traced" });
  t.teardown(() => agent.close());
  const spans: ReadableSpan[] = [];
  const exporter: SpanExporter = {
    export: (batch, done) => {
      spans.push(...batch);
      done({ code: ExportResultCode.SUCCESS });
    },
    shutdown: async () => undefined,
  };
  const k = await startTestKernel(
    t,
    {
      identity: {
        source: "none",
        jwt: { issuer: "https://idp.test", audience: "nops", algorithms: ["HS256"], hmacSecret: SECRET },
      },
    },
    { spanExporter: exporter },
  );
  const url = `http://127.0.0.1:${k.kernel.httpPort}/mcp`;
  await k.client(AgentRegistryService, "connect-json").registerAgent({
    tenant: "acme",
    name: "traced",
    version: "1",
    endpoint: `127.0.0.1:${agent.port}`,
    capabilities: [{ name: "echo" }],
  });
  const bearer = await new SignJWT({ roles: ["OPERATOR"], tenant: "acme" })
    .setProtectedHeader({ alg: "HS256" })
    .setIssuer("https://idp.test")
    .setAudience(url)
    .setSubject("tracer")
    .setIssuedAt()
    .setExpirationTime("10m")
    .sign(new TextEncoder().encode(SECRET));
  const client = new Client({ name: "trace-test", version: "1" });
  await client.connect(
    new StreamableHTTPClientTransport(new URL(url), {
      requestInit: { headers: { authorization: `Bearer ${bearer}` } },
    }),
  );
  const result = await client.callTool({
    name: "echo",
    arguments: { q: 1 },
    _meta: { traceparent: `00-${TRACE_ID}-00f067aa0ba902b7-01` },
  });
  t.falsy(result.isError, JSON.stringify(result));
  await client.close();

  t.is(agent.stats.traceparents.length, 1);
  t.regex(agent.stats.traceparents[0]!, new RegExp(`^00-${TRACE_ID}-`), "the agent received the MCP caller's trace");
  await k.kernel.stop(); // flushes the batch span processor
  const inTrace = spans.filter((s) => s.spanContext().traceId === TRACE_ID);
  const tool = inTrace.find((s) => s.name === "tools/call echo");
  const invoke = inTrace.find((s) => s.name === "nops.kernel.v1.RoutingService/Invoke");
  t.truthy(tool, inTrace.map((s) => s.name).join(", "));
  t.truthy(invoke, inTrace.map((s) => s.name).join(", "));
  t.is(tool!.parentSpanContext?.spanId, "00f067aa0ba902b7", "the tool call continues the caller's span");
  t.is(invoke!.parentSpanContext?.spanId, tool!.spanContext().spanId, "Invoke is a child of the tool call");
  t.is(tool!.attributes["gen_ai.tool.name"], "echo");
});
