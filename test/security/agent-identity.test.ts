import "reflect-metadata";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import test, { type ExecutionContext } from "ava";
import Database from "better-sqlite3";
import { Code, ConnectError, createClient, type Transport } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport } from "@connectrpc/connect-node";
import { AgentRegistryService } from "../../gen/nops/kernel/v1/agent_registry_pb.js";
import { ApiKeyService, Role } from "../../gen/nops/kernel/v1/api_key_pb.js";
import { RoutingService } from "../../gen/nops/kernel/v1/routing_pb.js";
import { createAgent } from "../../packages/agent-sdk/src/index.js";
import { createDevIdentity } from "../../packages/agent-sdk/src/identity.js";
import { BOTH, startTestKernel, type TransportName } from "../helpers/kernel.js";

// Issue 13 item 14: the kernel calls an agent only if its endpoint presents the SPIFFE ID the
// agent registered with, so one tenant cannot point the kernel at another tenant's agent.

async function devKernel(t: ExecutionContext) {
  const rateLimit = { ipOverrides: { "127.0.0.1": 1_000_000 } };
  const k = await startTestKernel(t, { identity: { source: "dev" }, rateLimit });
  const dir = join(k.dir, "dev-identity");
  const ca = readFileSync(join(dir, "bundle.pem"));
  const admin = createGrpcTransport({
    baseUrl: `https://localhost:${k.kernel.grpcPort}`,
    nodeOptions: { ca, cert: readFileSync(join(dir, "svid.pem")), key: readFileSync(join(dir, "svid.key")) },
  });
  // A caller with the given agent SVID, over the gRPC port (grpc-js) or the HTTP port (Connect JSON).
  const as = async (spiffeId: string, transport: TransportName): Promise<Transport> => {
    const id = createDevIdentity({ type: "dev", dir }, spiffeId);
    t.teardown(() => id.close());
    const { certPem, keyPem } = await id.ready();
    const nodeOptions = { ca, cert: certPem, key: keyPem };
    return transport === "grpc-js"
      ? createGrpcTransport({ baseUrl: `https://localhost:${k.kernel.grpcPort}`, nodeOptions })
      : createConnectTransport({
          baseUrl: `https://localhost:${k.kernel.httpPort}`,
          httpVersion: "1.1",
          useBinaryFormat: false,
          nodeOptions,
        });
  };
  return { k, dir, admin, as };
}

/** Tenant globex's agent, registered by itself with its own SVID; counts the calls that reach it. */
async function startVictim(t: ExecutionContext, dir: string, kernelUrl: string) {
  const hits = { n: 0 };
  const agent = createAgent({
    tenant: "globex",
    name: "vault",
    kernelUrl,
    identity: { type: "dev", dir },
    capabilities: {
      secret: {
        handle: async () => {
          hits.n++;
          return "globex-secret";
        },
      },
    },
    drain: { handleSignals: false, settleMs: 0 },
  });
  t.teardown(() => agent.drain("teardown"));
  await agent.start();
  return { agent, hits };
}

function auditActions(k: { kernel: { options: { databasePath: string } } }, action: string) {
  const db = new Database(k.kernel.options.databasePath, { readonly: true });
  try {
    return db.prepare("SELECT tenant, resource, details FROM audit_log WHERE action = ?").all(action) as {
      tenant: string;
      resource: string;
      details: string;
    }[];
  } finally {
    db.close();
  }
}

for (const transport of BOTH) {
  test(`agent identity - tenant A registers tenant B's agent endpoint: invoking through A never reaches B (${transport})`, async (t) => {
    const { k, dir, admin, as } = await devKernel(t);
    const victim = await startVictim(t, dir, `https://localhost:${k.kernel.grpcPort}`);
    const adminRouting = createClient(RoutingService, admin);
    // Control: B's own tenant reaches it, so the check does not refuse everything.
    await adminRouting.invoke({ tenant: "globex", capability: "secret" }, { timeoutMs: 10_000 });
    t.is(victim.hits.n, 1);

    // Tenant acme's agent (its own SVID) registers B's endpoint under its own name.
    const mallory = await as("spiffe://nops.local/nops/tenant/acme/agent/mallory", transport);
    const registered = await createClient(AgentRegistryService, mallory).registerAgent({
      tenant: "acme",
      name: "mallory",
      version: "1",
      endpoint: victim.agent.endpoint!,
      capabilities: [{ name: "secret" }],
    });
    t.is(registered.agent?.spiffeId, "spiffe://nops.local/nops/tenant/acme/agent/mallory");

    // An acme key (no SVID) registering B's endpoint is held to acme's id scheme too.
    const keys = createClient(ApiKeyService, admin);
    const key = await keys.createApiKey({ tenant: "acme", agentId: "keyed", name: "k", role: Role.AGENT });
    const http = createConnectTransport({
      baseUrl: `https://localhost:${k.kernel.httpPort}`,
      httpVersion: "1.1",
      nodeOptions: { ca: readFileSync(join(dir, "bundle.pem")) },
      interceptors: [(next) => (req) => (req.header.set("x-api-key", key.secret), next(req))],
    });
    const keyed = await createClient(AgentRegistryService, http).registerAgent({
      tenant: "acme",
      name: "keyed",
      version: "1",
      endpoint: victim.agent.endpoint!,
      capabilities: [{ name: "secret" }],
    });
    t.is(keyed.agent?.spiffeId, "spiffe://nops.local/nops/tenant/acme/agent/keyed");

    const routing = createClient(RoutingService, mallory);
    for (let i = 0; i < 3; i++) {
      const err = ConnectError.from(
        await t.throwsAsync(routing.invoke({ tenant: "acme", capability: "secret" }, { timeoutMs: 10_000 })),
      );
      t.is(err.code, Code.Unavailable, err.message);
      if (i === 0) t.regex(err.rawMessage, /did not present spiffe:\/\/nops\.local\/nops\/tenant\/acme\/agent\//);
      const stream = routing.invokeStream({ tenant: "acme", capability: "secret" }, { timeoutMs: 10_000 });
      const serr = ConnectError.from(
        await t.throwsAsync(async () => {
          for await (const _ of stream) t.fail("a chunk arrived from the wrong peer");
        }),
      );
      t.is(serr.code, Code.Unavailable, serr.message);
    }
    t.is(victim.hits.n, 1, "no call through acme reached globex's agent");
    const rows = auditActions(k, "routing.identity_mismatch");
    t.deepEqual(
      rows.map((r) => r.resource).sort(),
      [`agent/${keyed.agent!.id}`, `agent/${registered.agent!.id}`].sort(),
    );
    t.true(rows.every((r) => r.tenant === "acme"));
    t.true(rows.every((r) => (JSON.parse(r.details) as { endpoint: string }).endpoint === victim.agent.endpoint));
  });
}
