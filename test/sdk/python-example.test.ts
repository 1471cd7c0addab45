import { readFileSync } from "node:fs";
import { join } from "node:path";
import test from "ava";
import { Code, ConnectError } from "@connectrpc/connect";
import { AgentRegistryService } from "../../gen/nops/kernel/v1/agent_registry_pb.js";
import { RoutingService } from "../../gen/nops/kernel/v1/routing_pb.js";
import { kernelProcess, PYTHON, ROOT, spawnProc } from "./python-helpers.js";

test("python sdk - examples/python runs as its README says and answers through the kernel", async (t) => {
  // The README's second command, with the kernel's address and identity directory of this test's kernel.
  const readme = readFileSync(join(ROOT, "examples/python/README.md"), "utf8");
  const command = /^NOPS_TENANT=(\S+) PYTHONPATH=(\S+) python3 (\S+)$/m.exec(readme);
  t.truthy(command, "README names the command");
  const [, tenant, pythonPath, script] = command!;
  const k = await kernelProcess(t);
  await k.start();
  const agent = spawnProc(t, PYTHON, [script!], {
    NOPS_TENANT: tenant!,
    PYTHONPATH: join(ROOT, pythonPath!),
    PYTHONUNBUFFERED: "1",
    GRPC_VERBOSITY: "NONE",
    NOPS_KERNEL_ADDRESS: `localhost:${k.grpcPort}`,
    NOPS_IDENTITY_DIR: k.devDir,
  });
  const line = await agent.line(/registered as [0-9a-f-]{36}/, "the example to register");
  const agentId = /registered as ([0-9a-f-]{36})/.exec(line)![1]!;

  const routing = k.client(RoutingService);
  // The README's curl payload, decoded.
  const payload = /"payload":"([A-Za-z0-9+/=]+)"/.exec(readme)![1]!;
  const res = await routing.invoke(
    {
      tenant: tenant!,
      capability: "summarize",
      contentType: "application/json",
      payload: Buffer.from(payload, "base64"),
    },
    { timeoutMs: 30_000 },
  );
  const body = JSON.parse(new TextDecoder().decode(res.payload)) as { summary: string };
  t.is(res.agentId, agentId);
  t.true(body.summary.length > 0 && body.summary.length < 120, body.summary);
  const chunks: string[] = [];
  for await (const c of routing.invokeStream({
    tenant: tenant!,
    capability: "summarize.stream",
    payload: new TextEncoder().encode("One sentence here. Another sentence there. A third one!"),
  }))
    chunks.push(new TextDecoder().decode(c.payload));
  t.true(chunks.length >= 1 && chunks.length <= 3);
  await t.throwsAsync(
    routing.invoke({
      tenant: tenant!,
      capability: "summarize",
      contentType: "application/json",
      payload: new TextEncoder().encode("{}"),
    }),
    { instanceOf: ConnectError, message: /non-empty text/ },
  );

  agent.kill("SIGTERM");
  t.is(await agent.exited, 0);
  const registry = k.client(AgentRegistryService);
  const gone = await registry.getAgent({ tenant: tenant!, id: agentId }).then(
    () => "still registered",
    (e: unknown) => ConnectError.from(e).code,
  );
  t.is(gone, Code.NotFound);
});
