import test from "ava";
import { timestampMs } from "@bufbuild/protobuf/wkt";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { FederationService, PeerState } from "../../gen/nops/federation/v1/federation_pb.js";
import { createTestCa, type TestSvid } from "../helpers/test-ca.js";
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
