import test from "ava";
import { createAuditLog } from "../../src/audit/audit-log.js";
import { systemClock } from "../../src/common/clock.js";
import { createPeerRegistry, PeerRegistryError } from "../../src/federation/peer-registry.js";
import { followPeerEventLinks, peerEventLinks } from "../../src/kernel/peer-event-links.js";
import { createSilentLogger } from "../../src/telemetry/logger.js";
import type { PeerEventLink } from "../../src/events/event-federation.js";
import { openEventsDb, tempDbPath } from "../events/edge-pipeline.js";

const B = "spiffe://edge-b.test/nops/kernel/edgeb";
const C = "spiffe://edge-c.test/nops/kernel/edgec";

function registryOn(path: string) {
  const db = openEventsDb(path);
  const peers = createPeerRegistry({
    db,
    audit: createAuditLog(db, systemClock),
    clock: systemClock,
    logger: createSilentLogger(),
  });
  return { db, peers };
}

test("peer event links - only established peers with a recorded kernel id have one; the kernel id is validated and kept", (t) => {
  const path = tempDbPath();
  const { db, peers } = registryOn(path);
  for (const spiffeId of [B, C])
    peers.add(
      {
        spiffeId,
        grpcEndpoint: "peer.example:8443",
        httpEndpoint: "https://peer.example:8443",
        bundleSha256: "ab".repeat(32),
        agreement: { inbound: { tenants: ["acme"] }, outbound: { tenants: ["globex"] } },
      },
      "test",
    );
  const seen: PeerEventLink[][] = [];
  const unfollow = followPeerEventLinks(peers, { setPeerLinks: (l) => void seen.push([...l]) });
  t.deepEqual(seen, [[]], "pending peers have no link");

  const err = t.throws(() => peers.establish(B, "test", "edge.b.>"), { instanceOf: PeerRegistryError });
  t.is(err.field, "kernel_id");
  t.is(peers.get(B)!.state, "pending", "a refused kernel id establishes nothing");

  peers.establish(B, "test", "edgeb");
  // Established before kernel ids were recorded (or by a caller that has none): no link.
  peers.establish(C, "test");
  const link = { peer: B, edge: "edgeb", outboundTenants: ["globex"], inboundTenants: ["acme"] };
  t.deepEqual(seen.at(-1), [link]);
  t.regex(
    db
      .prepare<[], { details: string }>("SELECT details FROM audit_log WHERE action = 'federation.peer.establish'")
      .get()!.details,
    /edgeb/,
  );

  peers.quarantine(B, "test", "test");
  t.deepEqual(seen.at(-1), [], "a quarantined peer has no link");
  unfollow();
  peers.lift(B, "test");
  t.deepEqual(seen.at(-1), [], "no updates after unsubscribing");
  db.close();

  // Kept across a restart; a later handshake without a kernel id keeps it too.
  const again = registryOn(path);
  t.is(again.peers.get(B)!.kernelId, "edgeb");
  again.peers.establish(B, "test");
  t.deepEqual(peerEventLinks(again.peers.list()), [link]);
  again.db.close();
});
