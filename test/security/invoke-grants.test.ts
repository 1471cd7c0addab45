import "reflect-metadata";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import test, { type ExecutionContext } from "ava";
import Database from "better-sqlite3";
import { Code, ConnectError, createClient, type Transport } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport } from "@connectrpc/connect-node";
import { ApiKeyService, Role } from "../../gen/nops/kernel/v1/api_key_pb.js";
import { RoutingService } from "../../gen/nops/kernel/v1/routing_pb.js";
import { createAgent } from "../../packages/agent-sdk/src/index.js";
import { createDevIdentity } from "../../packages/agent-sdk/src/identity.js";
import { BOTH, startTestKernel } from "../helpers/kernel.js";

// Issue 16 item 2: an AGENT invokes only the capabilities its credential grants.

const NARROW = "spiffe://nops.local/nops/tenant/acme/agent/narrow";

async function setup(t: ExecutionContext) {
  const rateLimit = { ipOverrides: { "127.0.0.1": 1_000_000 } };
  const rules = [
    { match: { pathPrefix: "/nops/admin" }, roles: ["SUPER_ADMIN"] },
    // Granted one capability; rules are ordered, so this one wins over the tenant-wide default below.
    { match: { id: NARROW }, roles: ["AGENT"], tenantFromPath: true, agentFromPath: true, invoke: ["echo"] },
    {
      match: { pathPrefix: "/nops/tenant" },
      roles: ["AGENT"],
      tenantFromPath: true,
      agentFromPath: true,
      invoke: ["*"],
    },
  ];
  const k = await startTestKernel(t, { identity: { source: "dev", spiffe: { rules } }, rateLimit });
  const dir = join(k.dir, "dev-identity");
  const ca = readFileSync(join(dir, "bundle.pem"));
  const admin = createGrpcTransport({
    baseUrl: `https://localhost:${k.kernel.grpcPort}`,
    nodeOptions: { ca, cert: readFileSync(join(dir, "svid.pem")), key: readFileSync(join(dir, "svid.key")) },
  });
  const hits = { echo: 0, payroll: 0 };
  const worker = createAgent({
    tenant: "acme",
    name: "worker",
    kernelUrl: `https://localhost:${k.kernel.grpcPort}`,
    identity: { type: "dev", dir },
    capabilities: {
      echo: { handle: async (p: Uint8Array) => (hits.echo++, p) },
      "payroll.export": {
        handle: async () => (hits.payroll++, "salaries"),
        handleStream: async function* () {
          hits.payroll++;
          yield "salaries";
        },
      },
    },
    drain: { handleSignals: false, settleMs: 0 },
  });
  t.teardown(() => worker.drain("teardown"));
  await worker.start();
  return { k, dir, ca, admin, hits };
}

for (const transport of BOTH) {
  test(`invoke grants - an AGENT granted "echo" cannot Route, Invoke or InvokeStream anything else (${transport})`, async (t) => {
    const s = await setup(t);
    // grpc-js: the narrow agent SVID on the mTLS gRPC port (grants from the SPIFFE rule);
    // connect-json: an AGENT API key granted "echo" on the HTTP port (grants on the key).
    let caller: Transport;
    let actor: string;
    if (transport === "grpc-js") {
      const id = createDevIdentity({ type: "dev", dir: s.dir }, NARROW);
      t.teardown(() => id.close());
      const { certPem, keyPem } = await id.ready();
      caller = createGrpcTransport({
        baseUrl: `https://localhost:${s.k.kernel.grpcPort}`,
        nodeOptions: { ca: s.ca, cert: certPem, key: keyPem },
      });
      actor = NARROW;
    } else {
      const key = await createClient(ApiKeyService, s.admin).createApiKey({
        tenant: "acme",
        agentId: "narrow",
        name: "narrow",
        role: Role.AGENT,
        invokeGrants: ["echo"],
      });
      caller = createConnectTransport({
        baseUrl: `https://localhost:${s.k.kernel.httpPort}`,
        httpVersion: "1.1",
        nodeOptions: { ca: s.ca },
        interceptors: [(next) => (req) => (req.header.set("x-api-key", key.secret), next(req))],
      });
      actor = `apikey:${key.apiKey!.keyId}`;
    }
    const routing = createClient(RoutingService, caller);
    const ok = await routing.invoke({ tenant: "acme", capability: "echo", payload: new Uint8Array([7]) });
    t.deepEqual([...ok.payload], [7]);
    t.is((await routing.route({ tenant: "acme", capability: "echo" })).agent?.name, "worker");

    const refused = async (p: () => Promise<unknown>) => {
      const err = ConnectError.from(await t.throwsAsync(p));
      t.is(err.code, Code.PermissionDenied, err.message);
      t.regex(err.rawMessage, /no invoke grant for capability "payroll\.export"/);
    };
    await refused(() => routing.invoke({ tenant: "acme", capability: "payroll.export" }));
    await refused(() => routing.route({ tenant: "acme", capability: "payroll.export" }));
    await refused(async () => {
      for await (const _ of routing.invokeStream({ tenant: "acme", capability: "payroll.export" }))
        t.fail("a chunk arrived");
    });
    t.is(s.hits.payroll, 0, "the ungranted capability was never reached");

    // Operators and admins are not restricted by grants.
    const adminRouting = createClient(RoutingService, s.admin);
    await adminRouting.invoke({ tenant: "acme", capability: "payroll.export" });
    t.is(s.hits.payroll, 1);

    const db = new Database(s.k.kernel.options.databasePath, { readonly: true });
    t.teardown(() => db.close());
    const denials = db
      .prepare("SELECT actor, tenant, details FROM audit_log WHERE action = 'authz.deny' AND actor = ?")
      .all(actor) as { actor: string; tenant: string; details: string }[];
    t.true(denials.length >= 1, "the refusals are audited");
    t.true(denials.every((d) => d.tenant === "acme" && d.details.includes("payroll.export")));
  });
}
