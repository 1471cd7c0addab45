import test from "ava";
import { SignJWT } from "jose";
import { AgentRegistryService } from "../../gen/nops/kernel/v1/agent_registry_pb.js";
import { connectKernelTools } from "../../packages/agent-sdk/src/index.js";
import { startTestKernel } from "../helpers/kernel.js";
import { startEchoAgent } from "../routing/fixtures/echo-agent.js";

const SECRET = "mcp-test-secret-of-at-least-32-bytes!!";

test("agent sdk - connectKernelTools lists and calls the tenant's tools and hears catalog changes", async (t) => {
  const agent = await startEchoAgent({ name: "sdk-tools" });
  t.teardown(() => agent.close());
  const k = await startTestKernel(t, {
    identity: {
      source: "none",
      jwt: { issuer: "https://idp.test", audience: "nops", algorithms: ["HS256"], hmacSecret: SECRET },
    },
  });
  const url = `http://127.0.0.1:${k.kernel.httpPort}/mcp`;
  const registry = k.client(AgentRegistryService, "connect-json");
  const register = (capability: string) =>
    registry.registerAgent({
      tenant: "acme",
      name: capability,
      version: "1",
      endpoint: `127.0.0.1:${agent.port}`,
      capabilities: [{ name: capability, attributes: { description: `The ${capability} tool` } }],
    });
  await register("echo");
  const bearerToken = await new SignJWT({ roles: ["AGENT"], tenant: "acme", invoke: ["*"] })
    .setProtectedHeader({ alg: "HS256" })
    .setIssuer("https://idp.test")
    .setAudience(url)
    .setSubject("sdk")
    .setIssuedAt()
    .setExpirationTime("10m")
    .sign(new TextEncoder().encode(SECRET));
  const tools = await connectKernelTools({ url, bearerToken });
  t.teardown(() => tools.close());

  const listed = await tools.listTools();
  t.deepEqual(
    listed.map((tool) => [tool.name, tool.description]),
    [["echo", "The echo tool"]],
  );
  const result = await tools.callTool("echo", { hello: "world" });
  t.falsy(result.isError);
  t.deepEqual(JSON.parse((result.content as { text: string }[])[0]!.text), { hello: "world" });

  const changed = new Promise<void>((resolve) => tools.onToolsChanged(resolve));
  await register("summarize");
  await changed;
  t.deepEqual((await tools.listTools()).map((tool) => tool.name).sort(), ["echo", "summarize"]);
  await t.throwsAsync(connectKernelTools({ url, bearerToken, apiKey: "x" }), { instanceOf: TypeError });
});
