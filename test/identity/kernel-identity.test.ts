import "reflect-metadata";
import { connect as tlsConnect, type PeerCertificate } from "node:tls";
import test, { type ExecutionContext } from "ava";
import { Code, ConnectError, createClient, type Interceptor, type Transport } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport } from "@connectrpc/connect-node";
import { AgentRegistryService } from "../../gen/nops/kernel/v1/agent_registry_pb.js";
import { ApiKeyService, Role } from "../../gen/nops/kernel/v1/api_key_pb.js";
import { createTestCa, type TestCa, type TestSvid } from "../helpers/test-ca.js";
import { startWorkloadApiDouble, type WorkloadApiDouble } from "../helpers/workload-api-double.js";
import { startTestKernel, type TestKernel, TEST_API_KEY_PEPPER } from "../helpers/kernel.js";
import { waitFor } from "../helpers/processes.js";

const TD = "nops.test";

interface Setup {
  k: TestKernel;
  ca: TestCa;
  wl: WorkloadApiDouble;
  caPem: string;
  /** Transport to the grpc-js (strict mTLS) or connect-node (optional client cert) server. */
  transport(server: "grpc-js" | "connect-node", svid?: TestSvid, headers?: Record<string, string>): Transport;
}

async function setup(t: ExecutionContext): Promise<Setup> {
  const ca = await createTestCa(TD);
  const wl = await startWorkloadApiDouble();
  t.teardown(() => wl.close());
  const kernelSvid = await ca.issue({
    spiffeId: `spiffe://${TD}/nops/kernel/edge-test`,
    dnsNames: ["localhost"],
    ipAddresses: ["127.0.0.1"],
  });
  wl.issue({ spiffeId: `spiffe://${TD}/nops/kernel/edge-test`, svid: kernelSvid, bundle: ca.certDer });
  const k = await startTestKernel(t, {
    edgeId: "edge-test",
    trustDomain: TD,
    identity: { source: "workload-api", socket: wl.address, apiKeyPepper: TEST_API_KEY_PEPPER },
  });
  const transport: Setup["transport"] = (server, svid, headers) => {
    const nodeOptions = { ca: ca.certPem, ...(svid ? { cert: svid.certPem, key: svid.keyPem } : {}) };
    const addHeaders: Interceptor = (next) => async (req) => {
      for (const [key, v] of Object.entries(headers ?? {})) req.header.set(key, v);
      return next(req);
    };
    const interceptors = [addHeaders];
    return server === "grpc-js"
      ? createGrpcTransport({ baseUrl: `https://localhost:${k.kernel.grpcPort}`, nodeOptions, interceptors })
      : createConnectTransport({
          baseUrl: `https://localhost:${k.kernel.httpPort}`,
          httpVersion: "2",
          nodeOptions,
          interceptors,
        });
  };
  return { k, ca, wl, caPem: ca.certPem, transport };
}

async function code(p: Promise<unknown>): Promise<Code | "ok"> {
  try {
    await p;
    return "ok";
  } catch (e) {
    return ConnectError.from(e).code;
  }
}

const agent = (tenant: string) => ({ tenant, name: "a", version: "1", endpoint: "127.0.0.1:7000" });

test("identity - SVID callers are authenticated on both servers; no credential is UNAUTHENTICATED and audited", async (t) => {
  const s = await setup(t);
  const admin = await s.ca.issue({ spiffeId: `spiffe://${TD}/nops/admin/ops` });
  for (const server of ["grpc-js", "connect-node"] as const) {
    const client = createClient(AgentRegistryService, s.transport(server, admin));
    t.is(await code(client.registerAgent(agent("acme"))), "ok", server);
  }
  // connect-node admits a TLS client without a certificate, and authn refuses the call.
  const anon = createClient(AgentRegistryService, s.transport("connect-node"));
  t.is(await code(anon.listAgents({ tenant: "acme" })), Code.Unauthenticated);
  // grpc-js is the strict mTLS port: the handshake itself fails.
  const noCert = createClient(AgentRegistryService, s.transport("grpc-js"));
  t.not(await code(noCert.listAgents({ tenant: "acme" })), "ok");
  const denied = s.k.kernel.options.databasePath;
  t.truthy(denied);
  const Database = (await import("better-sqlite3")).default;
  const db = new Database(denied, { readonly: true });
  const rows = db.prepare("SELECT action, outcome FROM audit_log WHERE action = 'authn.deny'").all();
  db.close();
  t.true(rows.length >= 1, "the refusal is audited");
});

test("identity - an SVID of another trust domain is refused", async (t) => {
  const s = await setup(t);
  const rogue = await createTestCa("evil.example");
  const intruder = await rogue.issue({ spiffeId: "spiffe://evil.example/nops/admin/ops" });
  const client = createClient(AgentRegistryService, s.transport("connect-node", intruder));
  t.is(await code(client.listAgents({ tenant: "acme" })), Code.Unauthenticated);
});

test("identity - an agent SVID reaches only its own tenant, for every registry RPC", async (t) => {
  const s = await setup(t);
  const admin = createClient(
    AgentRegistryService,
    s.transport("grpc-js", await s.ca.issue({ spiffeId: `spiffe://${TD}/nops/admin/ops` })),
  );
  const other = (await admin.registerAgent(agent("globex"))).agent!;
  const acmeSvid = await s.ca.issue({ spiffeId: `spiffe://${TD}/nops/tenant/acme/agent/a` });
  for (const server of ["grpc-js", "connect-node"] as const) {
    const c = createClient(AgentRegistryService, s.transport(server, acmeSvid));
    const mine = (await c.registerAgent(agent("acme"))).agent!;
    t.is(await code(c.getAgent({ tenant: "acme", id: mine.id })), "ok");
    t.is(await code(c.heartbeat({ tenant: "acme", id: mine.id })), "ok");
    const crossTenant = {
      register: await code(c.registerAgent(agent("globex"))),
      get: await code(c.getAgent({ tenant: "globex", id: other.id })),
      list: await code(c.listAgents({ tenant: "globex" })),
      update: await code(
        c.updateAgent({ agent: { tenant: "globex", id: other.id, version: "2" }, updateMask: { paths: ["version"] } }),
      ),
      heartbeat: await code(c.heartbeat({ tenant: "globex", id: other.id })),
      deregister: await code(c.deregisterAgent({ tenant: "globex", id: other.id })),
      watch: await code(
        (async () => {
          for await (const _ of c.watchAgents({ tenant: "globex" })) break;
        })(),
      ),
    };
    t.deepEqual(
      crossTenant,
      {
        register: Code.PermissionDenied,
        get: Code.PermissionDenied,
        list: Code.PermissionDenied,
        update: Code.PermissionDenied,
        heartbeat: Code.PermissionDenied,
        deregister: Code.PermissionDenied,
        watch: Code.PermissionDenied,
      },
      server,
    );
  }
  t.is(
    (await admin.getAgent({ tenant: "globex", id: other.id })).agent?.id,
    other.id,
    "the other tenant's agent is untouched",
  );
});

test("identity - API keys: shown once, work for their tenant only, revoked at once", async (t) => {
  const s = await setup(t);
  const admin = createClient(
    ApiKeyService,
    s.transport("connect-node", await s.ca.issue({ spiffeId: `spiffe://${TD}/nops/admin/ops` })),
  );
  const created = await admin.createApiKey({ tenant: "acme", name: "ci", role: Role.OPERATOR });
  t.regex(created.secret, /^nops_/);
  const withKey = createClient(
    AgentRegistryService,
    s.transport("connect-node", undefined, { "x-api-key": created.secret }),
  );
  t.is(await code(withKey.registerAgent(agent("acme"))), "ok");
  t.is(await code(withKey.listAgents({ tenant: "globex" })), Code.PermissionDenied);
  const Database = (await import("better-sqlite3")).default;
  const db = new Database(s.k.kernel.options.databasePath, { readonly: true });
  // The secret part is base64url and may itself contain "_": cut by the fixed-length prefix.
  const secret = created.secret.slice(`nops_${created.apiKey!.keyId}_`.length);
  t.is(secret.length, 43);
  const dump =
    JSON.stringify(db.prepare("SELECT * FROM api_keys").all()) +
    JSON.stringify(db.prepare("SELECT * FROM audit_log").all());
  db.close();
  t.false(dump.includes(secret), "the key is never stored or audited in clear");
  await admin.revokeApiKey({ tenant: "acme", keyId: created.apiKey!.keyId });
  t.is(await code(withKey.listAgents({ tenant: "acme" })), Code.Unauthenticated);
});

function presentedCertificate(port: number, ca: string, svid: TestSvid): Promise<PeerCertificate> {
  return new Promise((resolve, reject) => {
    const socket = tlsConnect(
      {
        host: "127.0.0.1",
        port,
        servername: "localhost",
        ca,
        cert: svid.certPem,
        key: svid.keyPem,
        ALPNProtocols: ["h2"],
      },
      () => {
        resolve(socket.getPeerCertificate());
        socket.end();
      },
    );
    socket.once("error", reject);
  });
}

test("identity - a rotated SVID is presented on new handshakes while an open connection keeps working", async (t) => {
  const s = await setup(t);
  const adminSvid = await s.ca.issue({ spiffeId: `spiffe://${TD}/nops/admin/ops` });
  const client = createClient(AgentRegistryService, s.transport("grpc-js", adminSvid));
  await client.registerAgent(agent("acme"));
  const before = await presentedCertificate(s.k.kernel.grpcPort, s.caPem, adminSvid);
  const rotated = await s.ca.issue({
    spiffeId: `spiffe://${TD}/nops/kernel/edge-test`,
    dnsNames: ["localhost"],
    ipAddresses: ["127.0.0.1"],
  });
  s.wl.issue({ spiffeId: `spiffe://${TD}/nops/kernel/edge-test`, svid: rotated, bundle: s.ca.certDer });
  await waitFor(
    async () =>
      (await presentedCertificate(s.k.kernel.grpcPort, s.caPem, adminSvid)).serialNumber !== before.serialNumber,
    "rotation",
    10_000,
  );
  for (const port of [s.k.kernel.grpcPort, s.k.kernel.httpPort]) {
    await waitFor(
      async () => (await presentedCertificate(port, s.caPem, adminSvid)).fingerprint256 !== before.fingerprint256,
      `new certificate on ${port}`,
      10_000,
    );
  }
  // The connection opened before the rotation still serves calls.
  for (let i = 0; i < 20; i++) await client.listAgents({ tenant: "acme" });
  t.pass();
});
