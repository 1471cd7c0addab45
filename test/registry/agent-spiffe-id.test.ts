import "reflect-metadata";
import test, { type ExecutionContext } from "ava";
import Database from "better-sqlite3";
import { createClient, type Interceptor, type Transport } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { AgentRegistryService } from "../../gen/nops/kernel/v1/agent_registry_pb.js";
import { ApiKeyService, Role } from "../../gen/nops/kernel/v1/api_key_pb.js";
import { createTestCa, type TestCa, type TestSvid } from "../helpers/test-ca.js";
import { startWorkloadApiDouble } from "../helpers/workload-api-double.js";
import { startTestKernel, TEST_API_KEY_PEPPER } from "../helpers/kernel.js";

// A trust domain other than the dev default, so the scheme id is visibly the kernel's.
const TD = "nops.test";

async function setup(t: ExecutionContext) {
  const ca: TestCa = await createTestCa(TD);
  const wl = await startWorkloadApiDouble();
  t.teardown(() => wl.close());
  const kernelId = `spiffe://${TD}/nops/kernel/edge-test`;
  wl.issue({
    spiffeId: kernelId,
    svid: await ca.issue({ spiffeId: kernelId, dnsNames: ["localhost"], ipAddresses: ["127.0.0.1"] }),
    bundle: ca.certDer,
  });
  const k = await startTestKernel(t, {
    edgeId: "edge-test",
    trustDomain: TD,
    identity: { source: "workload-api", socket: wl.address, apiKeyPepper: TEST_API_KEY_PEPPER },
  });
  const transport = (svid?: TestSvid, headers: Record<string, string> = {}): Transport => {
    const addHeaders: Interceptor = (next) => async (req) => {
      for (const [key, v] of Object.entries(headers)) req.header.set(key, v);
      return next(req);
    };
    return createGrpcTransport({
      baseUrl: `https://localhost:${svid ? k.kernel.grpcPort : k.kernel.httpPort}`,
      nodeOptions: { ca: ca.certPem, ...(svid ? { cert: svid.certPem, key: svid.keyPem } : {}) },
      interceptors: [addHeaders],
    });
  };
  const admin = transport(await ca.issue({ spiffeId: `spiffe://${TD}/nops/admin/ops` }));
  return { ca, k, transport, admin };
}

const agent = (tenant: string, name: string) => ({ tenant, name, version: "1", endpoint: "127.0.0.1:7000" });

test("agent spiffe id - recorded from the registering agent SVID, else the id scheme in the kernel's trust domain", async (t) => {
  const s = await setup(t);
  const admin = createClient(AgentRegistryService, s.admin);
  const svid = `spiffe://${TD}/nops/tenant/acme/agent/summarizer`;
  const self = createClient(AgentRegistryService, s.transport(await s.ca.issue({ spiffeId: svid })));
  const mine = (await self.registerAgent(agent("acme", "summarizer"))).agent!;
  t.is(mine.spiffeId, svid, "an agent SVID registering itself");

  const byAdmin = (await admin.registerAgent(agent("acme", "translator"))).agent!;
  t.is(byAdmin.spiffeId, `spiffe://${TD}/nops/tenant/acme/agent/translator`, "an admin's SVID is not the agent's");

  const key = await createClient(ApiKeyService, s.admin).createApiKey({
    tenant: "acme",
    agentId: "keyed",
    name: "k",
    role: Role.AGENT,
  });
  const keyed = createClient(AgentRegistryService, s.transport(undefined, { "x-api-key": key.secret }));
  const viaKey = (await keyed.registerAgent(agent("acme", "keyed"))).agent!;
  t.is(viaKey.spiffeId, `spiffe://${TD}/nops/tenant/acme/agent/keyed`, "an API key registration");

  // The request cannot choose it: UpdateAgent's spiffe_id is read-only, and other fields keep it.
  const updated = await self.updateAgent({
    agent: { tenant: "acme", id: mine.id, version: "2", spiffeId: `spiffe://${TD}/nops/tenant/globex/agent/x` },
    updateMask: { paths: ["version"] },
  });
  t.is(updated.agent?.spiffeId, svid);
  // A new endpoint is bound to whoever set it.
  const moved = await admin.updateAgent({
    agent: { tenant: "acme", id: mine.id, endpoint: "127.0.0.1:7001" },
    updateMask: { paths: ["endpoint"] },
  });
  t.is(moved.agent?.spiffeId, `spiffe://${TD}/nops/tenant/acme/agent/summarizer`);

  // Kept in SQLite (agent_identities), so it survives a restart.
  const db = new Database(s.k.kernel.options.databasePath, { readonly: true });
  t.teardown(() => db.close());
  const rows = db.prepare("SELECT agent_id, spiffe_id FROM agent_identities ORDER BY spiffe_id").all() as {
    agent_id: string;
    spiffe_id: string;
  }[];
  t.deepEqual(
    rows.map((r) => r.spiffe_id),
    [
      `spiffe://${TD}/nops/tenant/acme/agent/keyed`,
      `spiffe://${TD}/nops/tenant/acme/agent/summarizer`,
      `spiffe://${TD}/nops/tenant/acme/agent/translator`,
    ],
  );
});
