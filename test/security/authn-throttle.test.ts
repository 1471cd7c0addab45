import { randomBytes } from "node:crypto";
import { join } from "node:path";
import test from "ava";
import Database from "better-sqlite3";
import { Code, ConnectError } from "@connectrpc/connect";
import { AgentRegistryService } from "../../gen/nops/kernel/v1/agent_registry_pb.js";
import { BOTH, startTestKernel } from "../helpers/kernel.js";

const badKey = () => `nops_${randomBytes(12).toString("hex")}_${randomBytes(32).toString("base64url")}`;

for (const transport of BOTH) {
  test(`authn throttle - 1,000 bad API keys from one address cost a handful of audit rows and get 429 quickly (${transport})`, async (t) => {
    const k = await startTestKernel(t, { authn: { allowAnonymous: false }, dge: { enabled: false } });
    const client = k.client(AgentRegistryService, transport);
    const codes = new Map<Code, number>();
    let next = 0;
    // 20 callers in parallel, 1,000 guesses in all.
    await Promise.all(
      Array.from({ length: 20 }, async () => {
        while (next++ < 1000) {
          try {
            await client.listAgents({ tenant: "acme" }, { headers: { "x-api-key": badKey() } });
            t.fail("a bad key was accepted");
          } catch (e) {
            const code = ConnectError.from(e).code;
            codes.set(code, (codes.get(code) ?? 0) + 1);
          }
        }
      }),
    );
    t.deepEqual([...codes.keys()].sort(), [Code.ResourceExhausted, Code.Unauthenticated].sort());
    t.true((codes.get(Code.Unauthenticated) ?? 0) <= 20 + 20, "only the first failures are verified at all");
    t.true((codes.get(Code.ResourceExhausted) ?? 0) >= 950);
    const db = new Database(join(k.dir, "kernel.db"), { readonly: true });
    t.teardown(() => db.close());
    const rows = db.prepare("SELECT count(*) AS n FROM audit_log WHERE action = 'authn.deny'").get() as { n: number };
    t.true(rows.n >= 1 && rows.n <= 5, `${rows.n} audit rows`);
  });
}
