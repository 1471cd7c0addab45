import { join } from "node:path";
import test from "ava";
import Database from "better-sqlite3";
import { Code, ConnectError } from "@connectrpc/connect";
import { EventBusService } from "../../gen/nops/kernel/v1/event_bus_pb.js";
import { BOTH, startTestKernel } from "../helpers/kernel.js";

for (const transport of BOTH) {
  test(`event doors - Publish into the kernel's own namespaces is INVALID_ARGUMENT (${transport})`, async (t) => {
    const k = await startTestKernel(t, { dge: { enabled: false } });
    const client = k.client(EventBusService, transport);
    for (const subject of [
      "egress.blocked.v1",
      "dge.policy.cache_invalidated.v1",
      "agent.registered.v1",
      "billing.x",
    ]) {
      const err = await t.throwsAsync(client.publish({ tenant: "acme", subject, payload: new Uint8Array([1]) }));
      t.is(ConnectError.from(err).code, Code.InvalidArgument, subject);
      t.regex(ConnectError.from(err).rawMessage, /^subject:? namespace "[a-z]+" is reserved/);
    }
    // A caller's own namespace is fine, even when it merely contains a reserved word.
    await client.publish({ tenant: "acme", subject: "orders.egress.v1", payload: new Uint8Array([1]) });
  });

  test(`event doors - the tenant and break-glass headers are stripped before the outbox (${transport})`, async (t) => {
    const k = await startTestKernel(t, { dge: { enabled: false } });
    const client = k.client(EventBusService, transport);
    const { outboxId } = await client.publish({
      tenant: "acme",
      subject: "orders.created.v1",
      payload: new Uint8Array([1]),
      headers: { "x-nops-tenant": "vip", "X-ENIS-Override": "grant", "x-order": "o-1" },
    });
    const db = new Database(join(k.dir, "kernel.db"), { readonly: true });
    t.teardown(() => db.close());
    const row = db.prepare("SELECT headers FROM outbox_headers WHERE outbox_id = ?").get(Number(outboxId)) as {
      headers: string;
    };
    t.deepEqual(JSON.parse(row.headers), { "x-order": "o-1" });
  });
}
