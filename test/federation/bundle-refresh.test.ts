import test from "ava";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { X509Certificate } from "node:crypto";
import { timestampMs } from "@bufbuild/protobuf/wkt";
import { FederationService, PeerState } from "../../gen/nops/federation/v1/federation_pb.js";
import { AdminService, DependencyState } from "../../gen/nops/kernel/v1/admin_pb.js";
import { startFedKernel, eventually, type FedKernel } from "./two-kernels.js";

let a: FedKernel;
let b: FedKernel;

test.before(async () => {
  // A serves its bundle with a one-second refresh hint; B refreshes on it.
  a = await startFedKernel("edge-a", "edge-a.test", { federation: { bundleRefreshHintSeconds: 1 } });
  b = await startFedKernel("edge-b", "edge-b.test", { federation: { minRefreshIntervalMs: 200 } });
});

test.after.always(async () => {
  await Promise.all([a?.stop(), b?.stop()]);
});

const admin = (k: FedKernel) => k.client(FederationService, { kernel: k, transport: "grpc" });

test.serial(
  "federation - a peer pinned by its CA's SHA-256 fingerprint gets its bundle from the bundle endpoint",
  async (t) => {
    const ca = new X509Certificate(readFileSync(join(a.dir, "dev-identity", "ca.pem"), "utf8"));
    await admin(b).addPeer({
      spiffeId: a.spiffeId,
      grpcEndpoint: a.grpcEndpoint,
      httpEndpoint: a.httpEndpoint,
      // Colons and upper case, as openssl prints it.
      bundleSha256: ca.fingerprint256,
    });
    const fetched = await eventually(async () => {
      const p = (await admin(b).listPeers({})).peers[0];
      return p && p.bundleSequence > 0n ? p : undefined;
    }, "B to fetch A's bundle");
    t.is(fetched.state, PeerState.PENDING);
    t.true(b.audit("federation.peer.bundle").some((r) => r.resource === `peer/${a.spiffeId}`));
    // With the bundle fetched, the handshake works without any bundle handed over by hand.
    const { body } = await b.get("/federation/bundle");
    await admin(a).addPeer({
      spiffeId: b.spiffeId,
      grpcEndpoint: b.grpcEndpoint,
      httpEndpoint: b.httpEndpoint,
      bundle: body,
    });
    t.is((await admin(b).connectPeer({ spiffeId: a.spiffeId, transport: "grpc" })).peer?.state, PeerState.ESTABLISHED);
  },
);

test.serial(
  "federation - the peer's bundle is fetched again on its refresh hint, without a new handshake",
  async (t) => {
    const first = (await admin(b).listPeers({})).peers[0]!;
    const firstAt = timestampMs(first.bundleRefreshedAt!);
    const later = await eventually(async () => {
      const p = (await admin(b).listPeers({})).peers[0];
      return p?.bundleRefreshedAt && timestampMs(p.bundleRefreshedAt) > firstAt ? p : undefined;
    }, "a refresh on the one-second hint");
    t.is(later.state, PeerState.ESTABLISHED);
    t.is(
      later.establishedAt && timestampMs(later.establishedAt),
      first.establishedAt && timestampMs(first.establishedAt),
    );
    // Calls keep working across refreshes.
    t.is(
      (await admin(b).connectPeer({ spiffeId: a.spiffeId, transport: "connect" })).peer?.state,
      PeerState.ESTABLISHED,
    );
  },
);

test.serial(
  "federation - a peer whose bundle cannot be verified is quarantined, audited and reported in GetStatus",
  async (t) => {
    // C's pin names a fingerprint A's bundle does not hold: what A's endpoint serves is not what the operator pinned.
    const c = await startFedKernel("edge-c", "edge-c.test", { federation: { minRefreshIntervalMs: 200 } });
    t.teardown(() => c.stop());
    await admin(c).addPeer({
      spiffeId: a.spiffeId,
      grpcEndpoint: a.grpcEndpoint,
      httpEndpoint: a.httpEndpoint,
      bundleSha256: "ab".repeat(32),
    });
    const quarantined = await eventually(async () => {
      const p = (await admin(c).listPeers({})).peers[0];
      return p?.state === PeerState.QUARANTINED ? p : undefined;
    }, "the peer to be quarantined");
    t.regex(quarantined.quarantineReason, /pinned SHA-256 fingerprint/);
    t.true(c.audit("federation.peer.quarantine").length === 1);
    const status = await c.client(AdminService, { kernel: c, transport: "grpc" }).getStatus({});
    const dep = status.dependencies.find((d) => d.name === "federation-peers");
    t.is(dep?.state, DependencyState.DEGRADED);
    t.regex(dep?.detail ?? "", /quarantined/);
    // An operator lifts the quarantine; the next fetch finds the same mismatch and quarantines again.
    await admin(c).quarantinePeer({ spiffeId: a.spiffeId, lift: true });
    await eventually(
      async () => (c.audit("federation.peer.quarantine").length === 2 ? true : undefined),
      "re-quarantine",
    );
    t.pass();
  },
);

test.serial(
  "federation - peers pinned in the config file are added at start; a bad one stops the start naming the field",
  async (t) => {
    const { body } = await a.get("/federation/bundle");
    const pin = { spiffeId: a.spiffeId, grpcEndpoint: a.grpcEndpoint, httpEndpoint: a.httpEndpoint, bundle: body };
    const d = await startFedKernel("edge-d", "edge-d.test", { federation: { peers: [pin] } });
    t.teardown(() => d.stop());
    const peers = (await d.client(FederationService, { kernel: d, transport: "grpc" }).listPeers({})).peers;
    t.deepEqual(
      peers.map((p) => [p.spiffeId, p.state]),
      [[a.spiffeId, PeerState.PENDING]],
    );
    t.is(d.audit("federation.peer.add")[0]?.actor, "config");
    const error = await t.throwsAsync(
      startFedKernel("edge-e", "edge-e.test", { federation: { peers: [{ ...pin, grpcEndpoint: "no-port" }] } }),
    );
    t.regex(error?.message ?? "", /federation\.peers\[0\]\.grpc_endpoint: must be host:port/);
  },
);
