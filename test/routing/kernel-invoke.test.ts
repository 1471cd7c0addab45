import test from "ava";
import { Code, ConnectError } from "@connectrpc/connect";
import Database from "better-sqlite3";
import { AgentRegistryService } from "../../gen/nops/kernel/v1/agent_registry_pb.js";
import { RoutingService } from "../../gen/nops/kernel/v1/routing_pb.js";
import { BOTH, startTestKernel } from "../helpers/kernel.js";
import { spawnEchoAgent } from "./fixtures/spawn-echo-agent.js";

const text = (s: string) => new TextEncoder().encode(s);

for (const transport of BOTH) {
  test(`kernel invoke - routes to a registered agent through the Egress Guard over ${transport}`, async (t) => {
    const agent = await spawnEchoAgent({ name: "echo-1" });
    t.teardown(() => agent.kill());
    // acme is tier 1 (metadata may leave), globex tier 3 (no PII may leave).
    const k = await startTestKernel(t, { egress: { tenantTiers: { acme: 1, globex: 3 } } });
    const registry = k.client(AgentRegistryService, transport);
    const routing = k.client(RoutingService, transport);
    for (const tenant of ["acme", "globex"]) {
      await registry.registerAgent({
        tenant,
        name: "echo",
        version: "1",
        endpoint: agent.endpoint,
        capabilities: [{ name: "echo" }],
      });
    }

    let limit: string | null = null;
    const ok = await routing.invoke(
      {
        tenant: "acme",
        capability: "echo",
        payload: text('{"op":"status","queue_depth":3}'),
        contentType: "application/json",
      },
      { onHeader: (h) => (limit = h.get("x-ratelimit-limit")) },
    );
    t.is(new TextDecoder().decode(ok.payload), '{"op":"status","queue_depth":3}', "the agent echoed the payload");
    t.truthy(limit, "rate-limit headers ride on every response");

    const err = await t.throwsAsync(
      routing.invoke({
        tenant: "globex",
        capability: "echo",
        payload: text("contact jane.doe@example.com, SSN 123-45-6789"),
        contentType: "text/plain",
      }),
    );
    t.is(ConnectError.from(err).code, Code.PermissionDenied, ConnectError.from(err).message);

    const db = new Database(k.kernel.options.databasePath, { readonly: true });
    const types = (db.prepare("SELECT type FROM outbox WHERE type LIKE 'egress.%'").all() as { type: string }[]).map(
      (r) => r.type,
    );
    const audit = db.prepare("SELECT count(*) AS n FROM audit_log WHERE action LIKE 'egress.%'").get() as { n: number };
    db.close();
    t.true(types.includes("egress.blocked.v1"), `blocked call emits egress.blocked.v1 (${types.join(",")})`);
    t.true(audit.n >= 1, "the block is audited");
  });
}
