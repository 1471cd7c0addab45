import test from "ava";
import { create } from "@bufbuild/protobuf";
import { connect } from "@nats-io/transport-node";
import { jetstreamManager } from "@nats-io/jetstream";
import { startNatsTopology, waitFor } from "../helpers/nats-servers.js";
import { openEventsDb, startEdgePipeline, tempDbPath, type EdgePipeline } from "./edge-pipeline.js";
import { ensureHubStreams } from "../../src/events/hub-streams.js";
import { resolveFederationLinks } from "../../src/events/event-federation.js";
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

/** Subscribes on B and acks every delivery; returns the event ids delivered, in order. */
function collect(edge: EdgePipeline, signal: AbortSignal): { ids: string[]; done: Promise<void> } {
  const ids: string[] = [];
  const stream = edge.service.subscribe(
    create(SubscribeRequestSchema, { tenant: "acme", consumer: "reader", filter: "orders.>" }),
    edge.context(signal),
  );
  const done = (async () => {
    try {
      for await (const r of stream) {
        const m = (r as SubscribeResponse).message;
        if (!m) continue;
        ids.push(m.eventId);
        await edge.service.ack(
          create(AckRequestSchema, { tenant: "acme", consumer: "reader", ackToken: m.ackToken, action: AckAction.ACK }),
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
    const topo = await startNatsTopology({ edgeDomain: "edgea", proxied: true });
    const closers: (() => Promise<unknown>)[] = [() => topo.destroy()];
    try {
      const b = await topo.addLeaf("edgeb");
      const hubConn = await connect({ servers: topo.hub.url, user: topo.hubUser.user, pass: topo.hubUser.pass });
      closers.unshift(() => hubConn.close());
      await ensureHubStreams(await jetstreamManager(hubConn), { edges: [{ edgeId: "edgea" }, { edgeId: "edgeb" }] });

      const common = { ...topo.kernelUser, retryInitialMs: 100 };
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
