import test from "ava";
import { AgentRegistryService } from "../../gen/nops/kernel/v1/agent_registry_pb.js";
import { BOTH, startTestKernel } from "../helpers/kernel.js";

// pino writes every binding of every child: a key bound twice appears twice in one JSON line,
// and log processors keep one of them at random.
test("logs - no line repeats a key (component, correlationId, …)", async (t) => {
  const k = await startTestKernel(t, { authn: { allowAnonymous: false } });
  for (const transport of BOTH) {
    const client = k.client(AgentRegistryService, transport);
    await t.throwsAsync(client.listAgents({ tenant: "acme" }));
    await t.throwsAsync(client.getAgent({ tenant: "acme", id: "missing" }));
    await t.throwsAsync(client.registerAgent({ tenant: "Not A Tenant!" }));
  }
  t.true(k.logs.length > 5);
  for (const line of k.logs) {
    const keys = [...line.matchAll(/[{,]"([A-Za-z_]+)":/g)].map((m) => m[1]);
    const top = JSON.parse(line) as Record<string, unknown>;
    // Nested objects may reuse a name; a repeat at the top level shows as fewer parsed keys.
    const repeated = ["component", "correlationId", "level", "msg"].filter(
      (key) => keys.filter((k) => k === key).length > 1 && !(typeof top[key] === "object"),
    );
    t.deepEqual(repeated, [], line);
  }
});
