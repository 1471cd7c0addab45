import test from "ava";
import { timestampMs } from "@bufbuild/protobuf/wkt";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { FederationService, PeerState } from "../../gen/nops/federation/v1/federation_pb.js";
import * as grpc from "@grpc/grpc-js";
import { AgentRegistryService } from "../../gen/nops/kernel/v1/agent_registry_pb.js";
import { RoutingService } from "../../gen/nops/kernel/v1/routing_pb.js";
import { agentSpiffeId } from "../../src/identity/index.js";
import { createTestCa, type TestCa, type TestSvid } from "../helpers/test-ca.js";
import { startEchoAgent, type EchoAgent } from "../routing/fixtures/echo-agent.js";
import { FAST_FEDERATION, handshake, pinPeer } from "./fed-fixtures.js";
import { startWorkloadApiDouble } from "../helpers/workload-api-double.js";
import { startFedKernel, eventually, type FedKernel } from "./two-kernels.js";
import { TEST_API_KEY_PEPPER } from "../helpers/kernel.js";

const B_ID = "spiffe://edge-b.test/nops/kernel/edge-b";

test("federation - a peer's rotated CA is accepted from its refreshed bundle: no new handshake, no failed call", async (t) => {
  const HOUR = 3600_000;
  const oldCa = await createTestCa("edge-b.test", { notBefore: new Date(Date.now() - 3 * HOUR) });
  const newCa = await createTestCa("edge-b.test", { notBefore: new Date(Date.now() - HOUR) });
  const wl = await startWorkloadApiDouble();
  t.teardown(() => wl.close());
  const svidOf = (ca: typeof oldCa) => ca.issue({ spiffeId: B_ID, ipAddresses: ["127.0.0.1"] });
  let bSvid: TestSvid = await svidOf(oldCa);
  const issue = (svid: TestSvid, bundle: Uint8Array[]) => {
    bSvid = svid;
    wl.issue({ spiffeId: B_ID, svid, bundle: Buffer.concat(bundle) });
  };
  issue(bSvid, [oldCa.certDer]);
  const developer = await oldCa.issue({ spiffeId: "spiffe://edge-b.test/nops/admin/developer" });

  const a = await startFedKernel("edge-a", "edge-a.test", { federation: { minRefreshIntervalMs: 200 } });
  t.teardown(() => a.stop());
  const b: FedKernel = await startFedKernel(
    "edge-b",
    "edge-b.test",
    {
      identity: { source: "workload-api", socket: wl.address, apiKeyPepper: TEST_API_KEY_PEPPER },
      federation: { bundleRefreshHintSeconds: 1 },
    },
    { cert: developer.certPem, key: developer.keyPem },
  );
  t.teardown(() => b.stop());
  const admin = (k: FedKernel) => k.client(FederationService, { kernel: k, transport: "grpc" });
  const pin = async (on: FedKernel, peer: FedKernel) =>
    admin(on).addPeer({
      spiffeId: peer.spiffeId,
      grpcEndpoint: peer.grpcEndpoint,
      httpEndpoint: peer.httpEndpoint,
      bundle: (await peer.get("/federation/bundle")).body,
    });
  await pin(a, b);
  await pin(b, a);
  const established = (await admin(a).connectPeer({ spiffeId: b.spiffeId, transport: "grpc" })).peer!;
  t.is(established.state, PeerState.ESTABLISHED);

  // B's kernel calls A over a new connection each time, with whatever SVID it holds now.
  let calls = 0;
  const failures: string[] = [];
  let calling = true;
  // Stops the loop whatever happens to the test (a throw must not leave it spinning).
  t.teardown(() => {
    calling = false;
  });
  const loop = (async () => {
    while (calling) {
      const svid = bSvid;
      const client = createClient(
        FederationService,
        createGrpcTransport({
          baseUrl: `https://${a.grpcEndpoint}`,
          nodeOptions: { cert: svid.certPem, key: svid.keyPem, rejectUnauthorized: false },
        }),
      );
      try {
        await client.discover({});
        calls++;
      } catch (err) {
        failures.push(String(err));
      }
      // A steady stream of calls, not a flood: the point is that none fails across the rotation.
      await new Promise((r) => setTimeout(r, 20));
    }
  })();
  const peerOnA = async () => (await admin(a).listPeers({})).peers.find((p) => p.spiffeId === B_ID)!;
  const bundleChange = async (from: string) =>
    eventually(async () => {
      const p = await peerOnA();
      return p.bundleFingerprint !== from ? p : undefined;
    }, "A to refresh B's bundle");

  // 1. B publishes the next CA beside the current one; A picks it up on the one-second hint.
  issue(bSvid, [oldCa.certDer, newCa.certDer]);
  const both = await bundleChange(established.bundleFingerprint);
  // 2. B's SVID now comes from the new CA; A still refreshes from B's endpoint (new SVID, trusted).
  issue(await svidOf(newCa), [oldCa.certDer, newCa.certDer]);
  const switchedAt = Date.now();
  await eventually(async () => {
    const p = await peerOnA();
    return timestampMs(p.bundleRefreshedAt!) > switchedAt + 1500 ? p : undefined;
  }, "a refresh after the switch");
  // 3. B retires the old CA.
  issue(bSvid, [newCa.certDer]);
  const onlyNew = await bundleChange(both.bundleFingerprint);
  const before = calls;
  await eventually(() => (calls > before + 3 ? true : undefined), "calls on the new CA alone");
  calling = false;
  await loop;

  t.deepEqual(failures, []);
  t.true(calls > 0);
  t.is(onlyNew.state, PeerState.ESTABLISHED);
  // Never handshaken again, never quarantined.
  t.is(timestampMs(onlyNew.establishedAt!), timestampMs(established.establishedAt!));
  t.is(a.audit("federation.peer.quarantine").length, 0);
  // Two changes: the next CA added, the old one retired (unchanged refreshes are not rewritten).
  t.is(a.audit("federation.peer.bundle").length, 2);
});

test("federation - federated Invokes under steady load across the peer's CA rotation: zero failed calls", async (t) => {
  const HOUR = 3600_000;
  const oldCa = await createTestCa("edge-b.test", { notBefore: new Date(Date.now() - 3 * HOUR) });
  const newCa = await createTestCa("edge-b.test", { notBefore: new Date(Date.now() - HOUR) });
  const wl = await startWorkloadApiDouble();
  t.teardown(() => wl.close());
  const kernelSvid = (ca: TestCa) => ca.issue({ spiffeId: B_ID, ipAddresses: ["127.0.0.1"] });
  let bSvid = await kernelSvid(oldCa);
  const issue = (svid: TestSvid, bundle: Uint8Array[]) => {
    bSvid = svid;
    wl.issue({ spiffeId: B_ID, svid, bundle: Buffer.concat(bundle) });
  };
  issue(bSvid, [oldCa.certDer]);
  const developer = await oldCa.issue({ spiffeId: "spiffe://edge-b.test/nops/admin/developer" });
  const fast = { ...FAST_FEDERATION.federation, minRefreshIntervalMs: 200 };
  const a = await startFedKernel("edge-a", "edge-a.test", { ...FAST_FEDERATION, federation: fast });
  t.teardown(() => a.stop());
  const b = await startFedKernel(
    "edge-b",
    "edge-b.test",
    {
      ...FAST_FEDERATION,
      identity: { source: "workload-api", socket: wl.address, apiKeyPepper: TEST_API_KEY_PEPPER },
      federation: { ...fast, bundleRefreshHintSeconds: 1 },
    },
    { cert: developer.certPem, key: developer.keyPem },
  );
  t.teardown(() => b.stop());
  const acme = { tenants: ["acme"], capabilities: ["*"] };
  await pinPeer(a, b, { inbound: acme, outbound: acme });
  await pinPeer(b, a, { inbound: acme, outbound: acme });
  await handshake(a, b);

  // B's agents hold SVIDs of B's CA too: the one of the old CA is replaced by one of the new CA mid-test.
  const agents: EchoAgent[] = [];
  t.teardown(async () => {
    await Promise.all([a.stop(), b.stop()]);
    await Promise.all(agents.map((x) => x.close()));
  });
  const bRegistry = b.client(AgentRegistryService, { kernel: b, transport: "grpc" });
  const startAgent = async (ca: TestCa, name: string) => {
    const svid = await ca.issue({ spiffeId: agentSpiffeId("edge-b.test", "acme", name), ipAddresses: ["127.0.0.1"] });
    const agent = await startEchoAgent({
      name,
      credentials: grpc.ServerCredentials.createSsl(
        Buffer.from(ca.certPem),
        [{ cert_chain: Buffer.from(svid.certPem), private_key: Buffer.from(svid.keyPem) }],
        false,
      ),
    });
    agents.push(agent);
    const { agent: registered } = await bRegistry.registerAgent({
      tenant: "acme",
      name,
      version: "1",
      endpoint: `127.0.0.1:${agent.port}`,
      capabilities: [{ name: "echo" }],
    });
    return { agent, id: registered!.id };
  };
  const first = await startAgent(oldCa, "echo-old");
  const routing = a.client(RoutingService, { kernel: a, transport: "grpc" });
  await eventually(
    () =>
      routing.route({ tenant: "acme", capability: "echo" }).then(
        (r) => r.agent,
        () => undefined,
      ),
    "A to route echo to B",
  );

  // Steady cross-kernel load: a few callers back to back, so calls are in flight at every step.
  let ok = 0;
  const failures: string[] = [];
  let calling = true;
  t.teardown(() => {
    calling = false;
  });
  const caller = async (n: number) => {
    for (let i = 0; calling; i++) {
      try {
        const res = await routing.invoke(
          { tenant: "acme", capability: "echo", payload: new TextEncoder().encode(`${n}/${i}`) },
          { timeoutMs: 30_000 },
        );
        if (new TextDecoder().decode(res.payload) !== `${n}/${i}`) failures.push(`${n}/${i}: wrong answer`);
        else ok++;
      } catch (err) {
        failures.push(`${n}/${i}: ${String(err)}`);
      }
    }
  };
  const load = Promise.all([0, 1, 2, 3].map(caller));
  const progress = async (what: string) => {
    const from = ok;
    await eventually(() => (ok > from + 20 ? true : undefined), what);
  };
  const peerOnA = async () =>
    (await a.client(FederationService, { kernel: a, transport: "grpc" }).listPeers({})).peers.find(
      (p) => p.spiffeId === B_ID,
    )!;
  const established = await peerOnA();
  const bundleChange = async (from: string) =>
    eventually(async () => {
      const p = await peerOnA();
      return p.bundleFingerprint !== from ? p : undefined;
    }, "A to refresh B's bundle");
  await progress("calls before the rotation");

  // 1. B publishes the next CA beside the current one; A rebuilds its link to B with the new trust.
  issue(bSvid, [oldCa.certDer, newCa.certDer]);
  const both = await bundleChange(established.bundleFingerprint);
  await progress("calls with both CAs trusted");
  // 2. Every SVID of B is re-issued under the new CA: the kernel's, and its agent's (a new instance
  //    replaces the old one, which is deregistered).
  issue(await kernelSvid(newCa), [oldCa.certDer, newCa.certDer]);
  const second = await startAgent(newCa, "echo-new");
  await bRegistry.deregisterAgent({ tenant: "acme", id: first.id, reason: "SVID re-issued under the new CA" });
  await progress("calls on the new SVIDs");
  // 3. B retires the old CA.
  issue(bSvid, [newCa.certDer]);
  const onlyNew = await bundleChange(both.bundleFingerprint);
  const served = second.agent.stats.calls;
  await progress("calls on the new CA alone");
  calling = false;
  await load;

  t.deepEqual(failures.slice(0, 5), [], `${failures.length} failed calls of ${ok + failures.length}`);
  t.true(second.agent.stats.calls > served, "calls reached the agent with the new SVID after the old CA was retired");
  t.is(onlyNew.state, PeerState.ESTABLISHED);
  t.is(timestampMs(onlyNew.establishedAt!), timestampMs(established.establishedAt!), "never handshaken again");
  t.is(a.audit("federation.peer.quarantine").length, 0);
});
