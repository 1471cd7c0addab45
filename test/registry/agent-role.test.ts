import "reflect-metadata";
import test, { type ExecutionContext } from "ava";
import { Code, ConnectError, createClient, type Interceptor, type Transport } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { AgentRegistryService } from "../../gen/nops/kernel/v1/agent_registry_pb.js";
import { ApiKeyService, Role } from "../../gen/nops/kernel/v1/api_key_pb.js";
import { EventBusService } from "../../gen/nops/kernel/v1/event_bus_pb.js";
import { RoutingService } from "../../gen/nops/kernel/v1/routing_pb.js";
import { createTestCa, type TestCa, type TestSvid } from "../helpers/test-ca.js";
import { startWorkloadApiDouble } from "../helpers/workload-api-double.js";
import { startTestKernel, TEST_API_KEY_PEPPER } from "../helpers/kernel.js";

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
    // API keys go to the HTTP port: the gRPC port is strict mTLS and refuses a handshake without a certificate.
    return createGrpcTransport({
      baseUrl: `https://localhost:${svid ? k.kernel.grpcPort : k.kernel.httpPort}`,
      nodeOptions: { ca: ca.certPem, ...(svid ? { cert: svid.certPem, key: svid.keyPem } : {}) },
      interceptors: [addHeaders],
    });
  };
  const admin = transport(await ca.issue({ spiffeId: `spiffe://${TD}/nops/admin/ops` }));
  return { ca, k, transport, admin };
}

async function code(p: Promise<unknown>): Promise<Code | "ok"> {
  try {
    await p;
    return "ok";
  } catch (e) {
    return ConnectError.from(e).code;
  }
}

const agent = (tenant: string, name: string) => ({ tenant, name, version: "1", endpoint: "127.0.0.1:7000" });

test("agent role - an agent SVID manages itself, works in its tenant, and nothing more", async (t) => {
  const s = await setup(t);
  const adminRegistry = createClient(AgentRegistryService, s.admin);
  const other = (await adminRegistry.registerAgent(agent("acme", "translator"))).agent!;
  const tr = s.transport(await s.ca.issue({ spiffeId: `spiffe://${TD}/nops/tenant/acme/agent/summarizer` }));
  const registry = createClient(AgentRegistryService, tr);

  const mine = (await registry.registerAgent(agent("acme", "summarizer"))).agent!;
  t.is(await code(registry.heartbeat({ tenant: "acme", id: mine.id })), "ok");
  t.is(
    await code(
      registry.updateAgent({
        agent: { tenant: "acme", id: mine.id, version: "2" },
        updateMask: { paths: ["version"] },
      }),
    ),
    "ok",
  );
  t.is(await code(registry.listAgents({ tenant: "acme" })), "ok");
  t.deepEqual(
    {
      registerAnother: await code(registry.registerAgent(agent("acme", "translator"))),
      rename: await code(
        registry.updateAgent({ agent: { tenant: "acme", id: mine.id, name: "x" }, updateMask: { paths: ["name"] } }),
      ),
      heartbeatOther: await code(registry.heartbeat({ tenant: "acme", id: other.id })),
      updateOther: await code(
        registry.updateAgent({
          agent: { tenant: "acme", id: other.id, version: "9" },
          updateMask: { paths: ["version"] },
        }),
      ),
      deregisterOther: await code(registry.deregisterAgent({ tenant: "acme", id: other.id })),
      otherTenant: await code(registry.registerAgent(agent("globex", "summarizer"))),
      createKey: await code(
        createClient(ApiKeyService, tr).createApiKey({ tenant: "acme", name: "k", role: Role.ADMIN }),
      ),
      listKeys: await code(createClient(ApiKeyService, tr).listApiKeys({ tenant: "acme" })),
      reprocess: await code(createClient(EventBusService, tr).reprocess({ tenant: "acme", deadLetterId: 1n })),
    },
    {
      registerAnother: Code.PermissionDenied,
      rename: Code.PermissionDenied,
      heartbeatOther: Code.PermissionDenied,
      updateOther: Code.PermissionDenied,
      deregisterOther: Code.PermissionDenied,
      otherTenant: Code.PermissionDenied,
      createKey: Code.PermissionDenied,
      listKeys: Code.PermissionDenied,
      reprocess: Code.PermissionDenied,
    },
  );
  // Publishing and invoking pass authz (what happens next is the bus's and the router's business).
  const published = await code(
    createClient(EventBusService, tr).publish({
      tenant: "acme",
      subject: "notes.created.v1",
      payload: new Uint8Array([1]),
    }),
  );
  t.not(published, Code.PermissionDenied);
  t.not(published, Code.Unauthenticated);
  const invoked = await code(createClient(RoutingService, tr).invoke({ tenant: "acme", capability: "translate" }));
  t.not(invoked, Code.PermissionDenied);
  t.is(
    await code(createClient(RoutingService, tr).invoke({ tenant: "globex", capability: "translate" })),
    Code.PermissionDenied,
  );
  t.is(await code(registry.deregisterAgent({ tenant: "acme", id: mine.id })), "ok");
  t.is((await adminRegistry.getAgent({ tenant: "acme", id: other.id })).agent?.version, "1", "untouched");
});

test("agent role - an agent API key rotates itself (old secret works in the grace period) but no other key", async (t) => {
  const s = await setup(t);
  const adminKeys = createClient(ApiKeyService, s.admin);
  const created = await adminKeys.createApiKey({
    tenant: "acme",
    agentId: "summarizer",
    name: "sum",
    role: Role.AGENT,
  });
  const another = await adminKeys.createApiKey({ tenant: "acme", name: "other", role: Role.AGENT });
  const withKey = (secret: string) => s.transport(undefined, { "x-api-key": secret });
  const keys = createClient(ApiKeyService, withKey(created.secret));
  t.is(
    await code(createClient(AgentRegistryService, withKey(created.secret)).registerAgent(agent("acme", "summarizer"))),
    "ok",
  );
  t.is(
    await code(keys.rotateApiKey({ tenant: "acme", keyId: another.apiKey!.keyId })),
    Code.PermissionDenied,
    "not another key",
  );
  const rotated = await keys.rotateApiKey({
    tenant: "acme",
    keyId: created.apiKey!.keyId,
    gracePeriod: { seconds: 60n },
  });
  t.not(rotated.secret, created.secret);
  for (const secret of [created.secret, rotated.secret]) {
    t.is(await code(createClient(AgentRegistryService, withKey(secret)).listAgents({ tenant: "acme" })), "ok");
  }
  t.is(
    await code(createClient(AgentRegistryService, withKey(rotated.secret)).registerAgent(agent("acme", "intruder"))),
    Code.PermissionDenied,
    "the key is bound to its agent's name",
  );
});
