import test from "ava";
import { create } from "@bufbuild/protobuf";
import { connect } from "@nats-io/transport-node";
import { jetstreamManager } from "@nats-io/jetstream";
import { startNatsTopology, waitFor } from "../helpers/nats-servers.js";
import { openEventsDb, startEdgePipeline, tempDbPath, type EdgePipeline } from "./edge-pipeline.js";
import { ensureHubStreams } from "../../src/events/hub-streams.js";
import { createEventFederation, resolveFederationLinks } from "../../src/events/event-federation.js";
import { createAuditLog } from "../../src/audit/audit-log.js";
import { createPeerRegistry, type PeerRegistry } from "../../src/federation/peer-registry.js";
import { followPeerEventLinks } from "../../src/kernel/peer-event-links.js";
import { systemClock } from "../../src/common/clock.js";
import { createSilentLogger } from "../../src/telemetry/logger.js";
import { createNoopMeter } from "@opentelemetry/api";
import { ConfigError } from "../../src/common/errors.js";
import {
  AckAction,
  AckRequestSchema,
  SubscribeRequestSchema,
  type SubscribeResponse,
} from "../../gen/nops/kernel/v1/event_bus_pb.js";

test("events.federation is validated, naming the field", (t) => {
  t.deepEqual(resolveFederationLinks(undefined, "edgea"), []);
  t.deepEqual(resolveFederationLinks([{ edge: "edgeb", outboundTenants: ["acme", "acme"] }], "edgea"), [
    { edge: "edgeb", outboundTenants: ["acme"], inboundTenants: [] },
  ]);
  t.throws(() => resolveFederationLinks([{ edge: "edgea" }], "edgea"), {
    instanceOf: ConfigError,
    message: /events\.federation\[0\]\.edge is this edge/,
  });
  t.throws(() => resolveFederationLinks([{ edge: "b", inboundTenants: ["Not A Tenant"] }], "edgea"), {
    message: /events\.federation\[0\]\.inboundTenants\[0\] is not a tenant id/,
  });
  t.throws(() => resolveFederationLinks({}, "edgea"), { message: /events\.federation must be a list/ });
});

/** A hub with leaves for edges A and B and the hub's streams for both; closes them through `closers`. */
async function twoEdgeHub(closers: (() => Promise<unknown>)[]) {
  const topo = await startNatsTopology({ edgeDomain: "edgea", proxied: true });
  closers.push(() => topo.destroy());
  const leafB = await topo.addLeaf("edgeb");
  const hubConn = await connect({ servers: topo.hub.url, user: topo.hubUser.user, pass: topo.hubUser.pass });
  closers.unshift(() => hubConn.close());
  await ensureHubStreams(await jetstreamManager(hubConn), { edges: [{ edgeId: "edgea" }, { edgeId: "edgeb" }] });
  return { topo, leafB, common: { ...topo.kernelUser, retryInitialMs: 100 } };
}

/** Subscribes on B and acks every delivery; returns the event ids delivered, in order. */
function collect(edge: EdgePipeline, signal: AbortSignal, tenant = "acme"): { ids: string[]; done: Promise<void> } {
  const ids: string[] = [];
  const stream = edge.service.subscribe(
    create(SubscribeRequestSchema, { tenant, consumer: "reader", filter: "orders.>" }),
    edge.context(signal),
  );
  const done = (async () => {
    try {
      for await (const r of stream) {
        const m = (r as SubscribeResponse).message;
        if (!m) continue;
        ids.push(m.eventId);
        await edge.service.ack(
          create(AckRequestSchema, { tenant, consumer: "reader", ackToken: m.ackToken, action: AckAction.ACK }),
          edge.context(),
        );
      }
    } catch (err) {
      if (!signal.aborted) throw err;
    }
  })();
  return { ids, done };
}

test.serial(
  "a tenant event on kernel A is delivered exactly once to its subscriber on kernel B across cuts",
  async (t) => {
    t.timeout(240_000);
    const closers: (() => Promise<unknown>)[] = [];
    try {
      const { topo, leafB: b, common } = await twoEdgeHub(closers);
      const a = startEdgePipeline({
        ...common,
        dbPath: tempDbPath(),
        natsUrl: topo.leaf.url,
        edgeId: "edgea",
        edgeDomain: "edgea",
        federation: [{ edge: "edgeb", outboundTenants: ["acme"], inboundTenants: [] }],
      });
      closers.unshift(() => a.close());
      const bDb = tempDbPath();
      const startB = () =>
        startEdgePipeline({
          ...common,
          dbPath: bDb,
          natsUrl: b.url,
          edgeId: "edgeb",
          edgeDomain: "edgeb",
          federation: [{ edge: "edgea", outboundTenants: [], inboundTenants: ["acme"] }],
        });
      let edgeB = startB();
      closers.unshift(() => edgeB.close());
      await waitFor(() => edgeB.bus.connection() !== undefined, "B connected");
      const ctrl = new AbortController();
      let sub = collect(edgeB, ctrl.signal);

      const sent: string[] = [];
      const publish = async (n: number) => {
        for (let i = 0; i < n; i++)
          sent.push(
            (await a.publish({ tenant: "acme", subject: "orders.created.v1", payload: Buffer.from(`o${i}`) })).eventId,
          );
      };
      await publish(5);
      // Another tenant's event: no link lets it cross.
      await a.publish({ tenant: "globex", subject: "orders.created.v1" });
      await waitFor(() => sub.ids.length >= 5, "first events on B", 60_000, 100);

      // Cut both edges' links to the hub; events keep being written on A.
      topo.link!.cut();
      await publish(20);
      await waitFor(() => a.bus.federation()!.forwarded === 25, "A forwarded to NOPS_FED_OUT while cut", 60_000, 100);
      t.is(sub.ids.length, 5, "nothing reaches B while the link is cut");
      topo.link!.heal();
      await waitFor(() => sub.ids.length >= 25, "all events on B after heal", 120_000, 100);

      // B loses its progress (as if its receipt was never written) and restarts: the redelivered
      // events are deduplicated by their envelope ids, the subscriber sees none twice.
      ctrl.abort();
      await sub.done;
      await edgeB.close();
      const reopened = openEventsDb(bDb);
      reopened.prepare("DELETE FROM bus_stream_progress").run();
      reopened.close();
      edgeB = startB();
      const ctrl2 = new AbortController();
      const before = sub.ids;
      await waitFor(() => edgeB.bus.connection() !== undefined, "B connected again");
      sub = collect(edgeB, ctrl2.signal);
      await waitFor(() => edgeB.bus.federation()!.delivered === 25, "B re-read NOPS_FED_IN", 60_000, 100);
      // One more event after the replay proves the subscriber is live, and that it is the only new delivery.
      await publish(1);
      await waitFor(() => sub.ids.length >= 1, "the event after the replay", 60_000, 100);
      const leafB = await jetstreamManager(edgeB.bus.connection()!);
      const stored = await leafB.streams.info("NOPS_EVENTS", { subjects_filter: "nops.events.acme.>" });
      t.is(stored.state.subjects?.["nops.events.acme.orders.created.v1"], 26, "each event stored once on B");
      ctrl2.abort();
      await sub.done;

      const delivered = [...before, ...sub.ids];
      t.deepEqual(delivered, sent, "every event exactly once, in order");
      t.is(a.bus.federation()!.forwarded, 26);
      t.is(edgeB.bus.federation()!.rejected, 0);
      await waitFor(
        () => edgeB.bus.links().find((l) => l.name === "federation-in")?.lagMessages === 0,
        "B's federation-in link caught up",
        30_000,
        100,
      );
      t.deepEqual(
        a.bus.links().map((l) => l.name),
        ["events-out", "federation-out", "federation-in"],
      );
    } finally {
      for (const c of closers) await c().catch(() => undefined);
    }
  },
);

test("event federation - a static link wins over a peer's link to the same edge; a peer naming this edge or another peer's kernel id gets none", (t) => {
  const db = openEventsDb(tempDbPath());
  const f = createEventFederation(
    { db, clock: systemClock, logger: createSilentLogger(), meter: createNoopMeter() },
    {
      edgeId: "edgea",
      hubDomain: "hub",
      streamName: "NOPS_EVENTS",
      duplicateWindowMs: 60_000,
      streamMaxAgeMs: 60_000,
      retryInitialMs: 100,
      retryMaxMs: 500,
      federation: [{ edge: "edgeb", outboundTenants: ["acme"], inboundTenants: [] }],
    },
  );
  const peer = (id: string, edge: string, tenants: string[]) => ({
    peer: `spiffe://${id}.test/nops/kernel/${edge}`,
    edge,
    outboundTenants: tenants,
    inboundTenants: tenants,
  });
  f.setPeerLinks([
    peer("b", "edgeb", ["globex"]),
    peer("self", "edgea", ["acme"]),
    peer("c1", "edgec", ["acme"]),
    peer("c2", "edgec", ["globex"]),
    peer("d", "edged", ["initech"]),
  ]);
  t.deepEqual(f.links(), [
    { edge: "edgeb", outboundTenants: ["acme"], inboundTenants: [] },
    { edge: "edged", outboundTenants: ["initech"], inboundTenants: ["initech"] },
  ]);
  f.setPeerLinks([]);
  t.deepEqual(f.links(), [{ edge: "edgeb", outboundTenants: ["acme"], inboundTenants: [] }]);
  db.close();
});

/** A peer pinned in `peers` (by fingerprint; no handshake in this test). */
function pinPeer(peers: PeerRegistry, spiffeId: string, agreement: Parameters<PeerRegistry["setAgreement"]>[1]): void {
  peers.add(
    {
      spiffeId,
      grpcEndpoint: "peer.example:8443",
      httpEndpoint: "https://peer.example:8443",
      bundleSha256: "ab".repeat(32),
      agreement,
    },
    "test",
  );
}

test.serial(
  "event federation - links from established peers' agreements (no events.federation): delivered, refused outside the agreement, changed live, never twice",
  async (t) => {
    t.timeout(240_000);
    const closers: (() => Promise<unknown>)[] = [];
    try {
      const { topo, leafB, common } = await twoEdgeHub(closers);
      const a = startEdgePipeline({
        ...common,
        dbPath: tempDbPath(),
        natsUrl: topo.leaf.url,
        edgeId: "edgea",
        edgeDomain: "edgea",
      });
      closers.unshift(() => a.close());
      const b = startEdgePipeline({
        ...common,
        dbPath: tempDbPath(),
        natsUrl: leafB.url,
        edgeId: "edgeb",
        edgeDomain: "edgeb",
      });
      closers.unshift(() => b.close());
      const registry = (db: EdgePipeline["db"]) =>
        createPeerRegistry({
          db,
          audit: createAuditLog(db, systemClock),
          clock: systemClock,
          logger: createSilentLogger(),
        });
      const peersA = registry(a.db);
      const peersB = registry(b.db);
      const A = "spiffe://edge-a.test/nops/kernel/edgea";
      const B = "spiffe://edge-b.test/nops/kernel/edgeb";
      // A may send acme and globex to B; B accepts acme only from A.
      pinPeer(peersA, B, { outbound: { tenants: ["acme", "globex"] } });
      pinPeer(peersB, A, { inbound: { tenants: ["acme"] } });
      for (const [peers, edge] of [
        [peersA, a],
        [peersB, b],
      ] as const) {
        const unfollow = followPeerEventLinks(peers, edge.bus);
        closers.unshift(() => Promise.resolve(unfollow()));
      }
      await waitFor(() => a.bus.connection() !== undefined && b.bus.connection() !== undefined, "both connected");
      t.deepEqual(a.bus.federationLinks(), [], "a pinned peer whose handshake has not run has no event link");
      t.is(a.bus.federation(), undefined);
      // What the verified handshakes would record: each side learns the other's kernel id.
      peersA.establish(B, "test", "edgeb");
      peersB.establish(A, "test", "edgea");
      t.deepEqual(a.bus.federationLinks(), [
        { edge: "edgeb", outboundTenants: ["acme", "globex"], inboundTenants: [] },
      ]);
      t.deepEqual(b.bus.federationLinks(), [{ edge: "edgea", outboundTenants: [], inboundTenants: ["acme"] }]);

      const ctrl = new AbortController();
      const acme = collect(b, ctrl.signal);
      const globex = collect(b, ctrl.signal, "globex");
      const publish = async (tenant: string) =>
        (await a.publish({ tenant, subject: "orders.created.v1", payload: Buffer.from(tenant) })).eventId;
      const sentAcme = [await publish("acme"), await publish("acme")];
      // A forwards globex (its agreement allows it), B refuses it (B's does not).
      const refusedGlobex = await publish("globex");
      // initech is in no agreement: A does not forward it.
      await publish("initech");
      sentAcme.push(await publish("acme"));
      await waitFor(() => acme.ids.length >= 3, "acme events on B", 60_000, 100);
      await waitFor(() => b.bus.federation()?.rejected === 1, "B refused the globex event", 60_000, 100);
      await waitFor(() => a.bus.federation()!.forwarded >= 4, "A's PubAcks counted", 60_000, 100);
      t.is(a.bus.federation()!.forwarded, 4, "acme x3 and globex, not initech");

      // B's agreement now accepts globex: the next globex event is delivered, the refused one never is.
      peersB.setAgreement(A, { inbound: { tenants: ["acme", "globex"] } }, "test");
      const deliveredGlobex = await publish("globex");
      await waitFor(() => globex.ids.length >= 1, "globex event on B after the change", 60_000, 100);

      // A's agreement drops acme: an acme event published now is not sent; the globex one after it is.
      peersA.setAgreement(B, { outbound: { tenants: ["globex"] } }, "test");
      await publish("acme");
      const laterGlobex = await publish("globex");
      await waitFor(() => globex.ids.length >= 2, "globex event after A dropped acme", 60_000, 100);

      // acme allowed again: delivery resumes with the next event only.
      peersA.setAgreement(B, { outbound: { tenants: ["acme", "globex"] } }, "test");
      sentAcme.push(await publish("acme"));
      await waitFor(() => acme.ids.length >= 4, "acme event after it was allowed again", 60_000, 100);

      // A quarantined peer has no link; nothing published meanwhile crosses after the handshake re-establishes it.
      peersA.quarantine(B, "test", "test");
      t.deepEqual(a.bus.federationLinks(), []);
      await publish("acme");
      // A's forwarder examines that event while no link exists (its progress passes the event).
      await waitFor(() => a.bus.relay.depth() === 0, "A's relay published it", 60_000, 100);
      const jsmA = await jetstreamManager(a.bus.connection()!);
      const tail = (await jsmA.streams.info("NOPS_EVENTS")).state.last_seq;
      const outProgress = a.db.prepare<[], { last_seq: number }>(
        "SELECT last_seq FROM bus_stream_progress WHERE stream = 'NOPS_EVENTS->NOPS_FED_OUT'",
      );
      await waitFor(() => (outProgress.get()?.last_seq ?? 0) >= tail, "A examined it", 60_000, 100);
      peersA.lift(B, "test");
      peersA.establish(B, "test", "edgeb");
      sentAcme.push(await publish("acme"));
      await waitFor(() => acme.ids.length >= 5, "acme event after re-establishing", 60_000, 100);

      // One more for each tenant proves nothing else was on its way.
      sentAcme.push(await publish("acme"));
      await waitFor(() => acme.ids.length >= 6, "last acme event", 60_000, 100);
      ctrl.abort();
      await Promise.all([acme.done, globex.done]);
      t.deepEqual(acme.ids, sentAcme, "each allowed acme event exactly once, in order");
      t.deepEqual(globex.ids, [deliveredGlobex, laterGlobex]);
      t.false(globex.ids.includes(refusedGlobex));
      const jsmB = await jetstreamManager(b.bus.connection()!);
      const stored = await jsmB.streams.info("NOPS_EVENTS", { subjects_filter: "nops.events.*.orders.>" });
      t.deepEqual(stored.state.subjects, {
        "nops.events.acme.orders.created.v1": 6,
        "nops.events.globex.orders.created.v1": 2,
      });
      t.is(b.bus.federation()!.rejected, 1);
    } finally {
      for (const c of closers) await c().catch(() => undefined);
    }
  },
);
