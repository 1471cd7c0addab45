import test, { type ExecutionContext } from "ava";
import { Code, ConnectError, createClient, type Transport } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport } from "@connectrpc/connect-node";
import { AgentRegistryService } from "../../gen/nops/kernel/v1/agent_registry_pb.js";
import { createTestCa, ExtendedKeyUsage, unknownExtension, type TestCa, type TestSvid } from "../helpers/test-ca.js";
import { startWorkloadApiDouble } from "../helpers/workload-api-double.js";
import { startTestKernel, type TestKernel, TEST_API_KEY_PEPPER } from "../helpers/kernel.js";

// Issue 13 item 16: one verifier for both ports. A client SVID that chains through intermediates
// is accepted on the grpc-js port as on the HTTP port, and path length, EKU clientAuth and
// unknown critical extensions are refused on the HTTP port as on the grpc-js port.

const TD = "nops.test";
const ADMIN = `spiffe://${TD}/nops/admin/ops`;
const SERVERS = ["grpc-js", "connect-node"] as const;
type Server = (typeof SERVERS)[number];

async function kernelWith(t: ExecutionContext, root: TestCa): Promise<TestKernel> {
  const wl = await startWorkloadApiDouble();
  t.teardown(() => wl.close());
  const id = `spiffe://${TD}/nops/kernel/edge-test`;
  const svid = await root.issue({ spiffeId: id, dnsNames: ["localhost"], ipAddresses: ["127.0.0.1"] });
  wl.issue({ spiffeId: id, svid, bundle: root.certDer });
  return startTestKernel(t, {
    edgeId: "edge-test",
    trustDomain: TD,
    identity: { source: "workload-api", socket: wl.address, apiKeyPepper: TEST_API_KEY_PEPPER },
  });
}

function transport(k: TestKernel, root: TestCa, server: Server, svid: TestSvid): Transport {
  const nodeOptions = { ca: root.certPem, cert: svid.certPem, key: svid.keyPem };
  return server === "grpc-js"
    ? createGrpcTransport({ baseUrl: `https://localhost:${k.kernel.grpcPort}`, nodeOptions })
    : createConnectTransport({ baseUrl: `https://localhost:${k.kernel.httpPort}`, httpVersion: "2", nodeOptions });
}

async function outcome(p: Promise<unknown>): Promise<Code | "ok"> {
  try {
    await p;
    return "ok";
  } catch (e) {
    return ConnectError.from(e).code;
  }
}

/** One row: a client SVID (made from the kernel's root) and whether both ports accept it. */
interface Row {
  name: string;
  accepted: boolean;
  svid(root: TestCa): Promise<TestSvid>;
}

const TABLE: Row[] = [
  { name: "leaf signed by the root", accepted: true, svid: (root) => root.issue({ spiffeId: ADMIN }) },
  {
    name: "leaf under one intermediate",
    accepted: true,
    svid: async (root) => (await root.intermediate()).issue({ spiffeId: ADMIN }),
  },
  {
    name: "leaf under two intermediates",
    accepted: true,
    svid: async (root) => (await (await root.intermediate()).intermediate()).issue({ spiffeId: ADMIN }),
  },
  {
    name: "intermediate with pathLen 0 above another intermediate",
    accepted: false,
    svid: async (root) =>
      (await (await root.intermediate({ pathLength: 0 })).intermediate()).issue({ spiffeId: ADMIN }),
  },
  {
    name: "intermediate with pathLen 1 above one intermediate",
    accepted: true,
    svid: async (root) =>
      (await (await root.intermediate({ pathLength: 1 })).intermediate()).issue({ spiffeId: ADMIN }),
  },
  {
    name: "leaf whose EKU lacks clientAuth",
    accepted: false,
    svid: (root) => root.issue({ spiffeId: ADMIN, extKeyUsages: [ExtendedKeyUsage.serverAuth] }),
  },
  {
    name: "leaf with clientAuth only",
    accepted: true,
    svid: (root) => root.issue({ spiffeId: ADMIN, extKeyUsages: [ExtendedKeyUsage.clientAuth] }),
  },
  {
    name: "leaf without EKU",
    accepted: true,
    svid: (root) => root.issue({ spiffeId: ADMIN, extKeyUsages: null }),
  },
  {
    name: "intermediate whose EKU lacks clientAuth",
    accepted: false,
    svid: async (root) =>
      (await root.intermediate({ extKeyUsages: [ExtendedKeyUsage.serverAuth] })).issue({ spiffeId: ADMIN }),
  },
  {
    name: "leaf with an unknown critical extension",
    accepted: false,
    svid: (root) => root.issue({ spiffeId: ADMIN, extraExtensions: [unknownExtension(true)] }),
  },
  {
    name: "leaf with an unknown non-critical extension",
    accepted: true,
    svid: (root) => root.issue({ spiffeId: ADMIN, extraExtensions: [unknownExtension(false)] }),
  },
  {
    name: "intermediate with an unknown critical extension",
    accepted: false,
    svid: async (root) =>
      (await root.intermediate({ extraExtensions: [unknownExtension(true)] })).issue({ spiffeId: ADMIN }),
  },
];

test("svid chains - both ports accept and refuse the same client chains", async (t) => {
  const root = await createTestCa(TD);
  const k = await kernelWith(t, root);
  for (const row of TABLE) {
    const svid = await row.svid(root);
    for (const server of SERVERS) {
      const client = createClient(AgentRegistryService, transport(k, root, server, svid));
      const got = await outcome(client.listAgents({ tenant: "acme" }));
      if (row.accepted) t.is(got, "ok", `${row.name} on ${server}`);
      // The grpc-js port refuses in the handshake; the HTTP port (whose TLS admits callers without a
      // certificate, for API keys and tokens) refuses the call as unauthenticated.
      else if (server === "connect-node") t.is(got, Code.Unauthenticated, `${row.name} on ${server}`);
      else t.not(got, "ok", `${row.name} on ${server}`);
    }
  }
});

test("svid chains - a root with pathLen 0 admits direct leaves only, on both ports", async (t) => {
  const root = await createTestCa(TD, { pathLength: 0 });
  const k = await kernelWith(t, root);
  const direct = await root.issue({ spiffeId: ADMIN });
  const viaIntermediate = await (await root.intermediate()).issue({ spiffeId: ADMIN });
  for (const server of SERVERS) {
    t.is(
      await outcome(
        createClient(AgentRegistryService, transport(k, root, server, direct)).listAgents({ tenant: "acme" }),
      ),
      "ok",
    );
    t.not(
      await outcome(
        createClient(AgentRegistryService, transport(k, root, server, viaIntermediate)).listAgents({ tenant: "acme" }),
      ),
      "ok",
      server,
    );
  }
});
