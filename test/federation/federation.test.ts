import test from "ava";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { createPrivateKey, randomBytes, X509Certificate } from "node:crypto";
import { Code, ConnectError } from "@connectrpc/connect";
import { FederationService, PeerState } from "../../gen/nops/federation/v1/federation_pb.js";
import { AdminService } from "../../gen/nops/kernel/v1/admin_pb.js";
import { parseSpiffeBundle } from "../../src/federation/index.js";
import { signDescriptor } from "../../src/federation/descriptor.js";
import { pemToDer } from "../../src/identity/index.js";
import { systemClock } from "../../src/common/clock.js";
import { startFedKernel, type FedKernel } from "./two-kernels.js";

let a: FedKernel;
let b: FedKernel;

test.before(async () => {
  a = await startFedKernel("edge-a", "edge-a.test");
  b = await startFedKernel("edge-b", "edge-b.test");
});

test.after.always(async () => {
  await Promise.all([a?.stop(), b?.stop()]);
});

async function code(p: Promise<unknown>): Promise<Code | undefined> {
  try {
    await p;
    return undefined;
  } catch (err) {
    if (process.env.FED_DEBUG) console.log(ConnectError.from(err).message);
    return ConnectError.from(err).code;
  }
}

const admin = (k: FedKernel, transport: "grpc" | "connect" = "grpc") =>
  k.client(FederationService, { kernel: k, transport });

async function pin(on: FedKernel, peer: FedKernel, spiffeId = peer.spiffeId) {
  const { body } = await peer.get("/federation/bundle");
  return admin(on).addPeer({
    spiffeId,
    grpcEndpoint: peer.grpcEndpoint,
    httpEndpoint: peer.httpEndpoint,
    bundle: body,
    agreement: { inbound: { tenants: ["acme"], capabilities: ["*"] }, outbound: { tenants: ["acme"] } },
  });
}

test.serial(
  "federation - the bundle endpoint serves the SPIFFE bundle format of the kernel's trust domain",
  async (t) => {
    const { status, body } = await a.get("/federation/bundle");
    t.is(status, 200);
    const doc = JSON.parse(body) as {
      keys: { use: string; x5c: string[] }[];
      spiffe_sequence: number;
      spiffe_refresh_hint: number;
    };
    t.true(doc.keys.length >= 1);
    t.is(doc.keys[0]!.use, "x509-svid");
    t.true(doc.spiffe_sequence > 0);
    t.is(doc.spiffe_refresh_hint, 300);
    const ca = readFileSync(join(a.dir, "dev-identity", "ca.pem"), "utf8");
    t.is(
      new X509Certificate(Buffer.from(doc.keys[0]!.x5c[0]!, "base64")).fingerprint256,
      new X509Certificate(ca).fingerprint256,
    );
    t.is(parseSpiffeBundle("edge-a.test", body).x509.authorities.length, doc.keys.length);
  },
);

test.serial(
  "federation - Discover answers a descriptor signed with the SVID key on both transports and GET /federation/discover",
  async (t) => {
    for (const transport of ["grpc", "connect"] as const) {
      // Discover is public, but the gRPC port is strict mTLS: a client certificate B trusts is still needed there.
      const caller = transport === "grpc" ? b : a;
      const as = transport === "grpc" ? "developer" : "none";
      const { descriptor } = await caller.client(FederationService, { kernel: b, transport, as }).discover({});
      t.is(descriptor?.descriptor?.spiffeId, b.spiffeId, transport);
      t.is(descriptor?.descriptor?.trustDomain, "edge-b.test");
      t.is(descriptor?.descriptor?.grpcEndpoint, b.grpcEndpoint);
      t.is(descriptor?.descriptor?.httpEndpoint, b.httpEndpoint);
      t.deepEqual(descriptor?.descriptor?.apiVersions, ["nops.federation.v1"]);
      t.is(descriptor?.descriptor?.bundleEndpointUrl, `${b.httpEndpoint}/federation/bundle`);
      t.regex(descriptor?.jws ?? "", /^[\w-]+\.[\w-]+\.[\w-]+$/);
    }
    const plain = await b.get("/federation/discover");
    t.is(plain.status, 200);
    const jws = (JSON.parse(plain.body) as { descriptor: { jws: string } }).descriptor.jws;
    const header = JSON.parse(Buffer.from(jws.split(".")[0]!, "base64url").toString()) as {
      alg: string;
      x5c: string[];
    };
    t.is(header.alg, "ES256");
    t.regex(new X509Certificate(Buffer.from(header.x5c[0]!, "base64")).subjectAltName ?? "", /nops\/kernel\/edge-b/);
  },
);

test.serial("federation - an unpinned peer is refused and audited", async (t) => {
  await pin(a, b);
  // B has not pinned A: over Connect (client certificate optional) B refuses the hello itself.
  t.is(await code(admin(a).connectPeer({ spiffeId: b.spiffeId, transport: "connect" })), Code.FailedPrecondition);
  const denied = b.audit("federation.handshake");
  t.true(denied.some((r) => r.outcome === "denied" && r.details.includes("not a pinned peer")));
  // Over gRPC (strict mTLS) B's TLS does not even accept A's certificate: A's trust domain is not in B's store.
  t.not(await code(admin(a).connectPeer({ spiffeId: b.spiffeId, transport: "grpc" })), undefined);
  t.is((await admin(a).listPeers({})).peers[0]?.state, PeerState.PENDING);
});

test.serial("federation - a wrong pinned SPIFFE ID is refused and audited", async (t) => {
  await pin(b, a, "spiffe://edge-a.test/nops/kernel/someone-else");
  t.is(await code(admin(a).connectPeer({ spiffeId: b.spiffeId, transport: "connect" })), Code.FailedPrecondition);
  t.true(b.audit("federation.handshake").some((r) => r.details.includes("not the pinned peer")));
  await admin(b).removePeer({ spiffeId: "spiffe://edge-a.test/nops/kernel/someone-else" });
  t.true(b.audit("federation.peer.remove").length === 1);
});

test.serial("federation - the mutual handshake establishes both sides over grpc-js and over Connect", async (t) => {
  await pin(b, a);
  for (const transport of ["grpc", "connect"] as const) {
    const { peer } = await admin(a).connectPeer({ spiffeId: b.spiffeId, transport });
    t.is(peer?.state, PeerState.ESTABLISHED, transport);
    // Each side keeps the kernel id the other's verified descriptor carried (its event link's edge).
    t.is(peer?.kernelId, "edge-b", transport);
    const onB = (await admin(b).listPeers({})).peers.find((p) => p.spiffeId === a.spiffeId);
    t.is(onB?.state, PeerState.ESTABLISHED, transport);
    t.is(onB?.kernelId, "edge-a", transport);
  }
  t.true(b.audit("federation.peer.establish").length >= 2);
  t.true(a.audit("federation.peer.establish").length >= 2);
  // B -> A works too (each side pinned the other).
  t.is((await admin(b).connectPeer({ spiffeId: a.spiffeId, transport: "grpc" })).peer?.state, PeerState.ESTABLISHED);
});

test.serial("federation - a descriptor whose kernel_id is not an edge id is refused and audited", async (t) => {
  const file = (f: string) => readFileSync(join(a.dir, "dev-identity", f), "utf8");
  const signed = await signDescriptor(
    {
      spiffeId: a.spiffeId,
      certificates: pemToDer("CERTIFICATE", file("kernel-svid.pem")),
      privateKey: createPrivateKey(file("kernel-svid.key")),
    },
    {
      kernelId: "edge.a.>",
      grpcEndpoint: a.grpcEndpoint,
      httpEndpoint: a.httpEndpoint,
      bundleEndpointUrl: `${a.httpEndpoint}/federation/bundle`,
      tenants: [],
    },
    systemClock,
    60_000,
  );
  const anon = a.client(FederationService, { kernel: b, transport: "connect", as: "none" });
  const bundle = (await a.get("/federation/bundle")).body;
  const before = b.audit("federation.handshake").length;
  t.is(
    await code(
      anon.handshake({ step: { case: "hello", value: { descriptor: signed, bundle, nonce: randomBytes(32) } } }),
    ),
    Code.InvalidArgument,
  );
  const rows = b.audit("federation.handshake").slice(before);
  t.true(rows.some((r) => r.outcome === "denied" && r.details.includes("descriptor.kernel_id must match")));
});

test.serial("federation - a forged descriptor signature is refused and audited", async (t) => {
  const anon = a.client(FederationService, { kernel: b, transport: "connect", as: "none" });
  const { descriptor } = await a
    .client(FederationService, { kernel: a, transport: "connect", as: "none" })
    .discover({});
  const [h, p, s] = descriptor!.jws.split(".");
  // Same header (A's genuine x5c), another payload: the signature no longer covers it.
  const forgedPayload = Buffer.from(
    Buffer.from(p!, "base64url").toString().replace(a.grpcEndpoint, "203.0.113.9:443"),
  ).toString("base64url");
  const bundle = (await a.get("/federation/bundle")).body;
  const before = b.audit("federation.handshake").length;
  t.is(
    await code(
      anon.handshake({
        step: {
          case: "hello",
          value: { descriptor: { jws: `${h}.${forgedPayload}.${s}` }, bundle, nonce: randomBytes(32) },
        },
      }),
    ),
    Code.Unauthenticated,
  );
  const rows = b.audit("federation.handshake").slice(before);
  t.true(rows.some((r) => r.outcome === "denied" && r.details.includes("signature does not verify")));
});

test.serial(
  "federation - a replayed hello nonce and a replayed or unknown finish are refused and audited",
  async (t) => {
    const anon = a.client(FederationService, { kernel: b, transport: "connect", as: "none" });
    const { descriptor } = await a
      .client(FederationService, { kernel: a, transport: "connect", as: "none" })
      .discover({});
    const bundle = (await a.get("/federation/bundle")).body;
    const nonce = randomBytes(32);
    const hello = { step: { case: "hello" as const, value: { descriptor: { jws: descriptor!.jws }, bundle, nonce } } };
    const first = await anon.handshake(hello);
    t.truthy(first.handshakeId);
    t.is(await code(anon.handshake(hello)), Code.Unauthenticated);
    t.true(b.audit("federation.handshake").some((r) => r.details.includes("replay")));
    // Without A's key the finish cannot be made; a wrong proof burns the handshake id for good.
    const finish = {
      step: { case: "finish" as const, value: { handshakeId: first.handshakeId, proof: descriptor!.jws } },
    };
    t.not(await code(anon.handshake(finish)), undefined);
    t.is(await code(anon.handshake(finish)), Code.Unauthenticated);
    t.true(b.audit("federation.handshake").some((r) => r.details.includes("unknown, used or expired")));
    // The roadmap's POST /federation/handshake is the same RPC (Connect JSON): a replay there is refused too.
    const plain = await b.post("/federation/handshake", {
      hello: { descriptor: { jws: descriptor!.jws }, bundle, nonce: nonce.toString("base64") },
    });
    t.is(plain.status, 401);
    t.regex(plain.body, /replay/);
    const fresh = await b.post("/federation/handshake", {
      hello: { descriptor: { jws: descriptor!.jws }, bundle, nonce: randomBytes(32).toString("base64") },
    });
    t.is(fresh.status, 200);
    t.truthy((JSON.parse(fresh.body) as { handshakeId?: string }).handshakeId);
  },
);

test.serial("federation - a peer kernel cannot call operator RPCs", async (t) => {
  // A's own kernel SVID, from a trust domain B federates with: authenticated, yet no operator.
  const asPeer = a.client(FederationService, { kernel: b, transport: "grpc", as: "kernel" });
  t.is(await code(asPeer.listPeers({})), Code.PermissionDenied);
  t.is(await code(asPeer.removePeer({ spiffeId: a.spiffeId })), Code.PermissionDenied);
  t.is(
    await code(a.client(AdminService, { kernel: b, transport: "grpc", as: "kernel" }).getStatus({})),
    Code.PermissionDenied,
  );
  t.true(b.audit("authz.deny").some((r) => r.actor === a.spiffeId));
  t.is((await admin(b).listPeers({})).peers.length, 1);
});

test.serial(
  "federation - removing a peer stops trusting it at once; a bad pin is refused naming the field",
  async (t) => {
    t.is(
      await code(admin(b).addPeer({ spiffeId: "not-an-id", grpcEndpoint: "x:1", httpEndpoint: "https://x" })),
      Code.InvalidArgument,
    );
    t.is(
      await code(admin(b).addPeer({ spiffeId: "spiffe://c.test/k", grpcEndpoint: "x:1", httpEndpoint: "https://x" })),
      Code.InvalidArgument,
    );
    // A connection A's kernel opened while pinned: authenticated (yet not allowed) on B...
    const open = a.client(FederationService, { kernel: b, transport: "grpc", as: "kernel" });
    t.is(await code(open.listPeers({})), Code.PermissionDenied);
    await admin(b).removePeer({ spiffeId: a.spiffeId });
    // ...no longer authenticates on that same connection once the peer is removed,
    t.is(await code(open.listPeers({})), Code.Unauthenticated);
    // and a new connection from A's kernel SVID no longer passes B's TLS.
    t.not(
      await code(a.client(FederationService, { kernel: b, transport: "grpc", as: "kernel" }).discover({})),
      undefined,
    );
    t.is(await code(admin(a).connectPeer({ spiffeId: b.spiffeId, transport: "connect" })), Code.FailedPrecondition);
  },
);
