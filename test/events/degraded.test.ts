import test from "ava";
import { fromBinary } from "@bufbuild/protobuf";
import { startNatsTopology, waitFor } from "../helpers/nats-servers.js";
import { startEdgePipeline, tempDbPath } from "./edge-pipeline.js";
import { readStreamEnvelopes } from "./hub-reader.js";
import { EventEnvelopeSchema } from "../../gen/nops/events/v1/envelope_pb.js";
import { DegradedModeActivatedSchema } from "../../gen/nops/events/v1/degraded_events_pb.js";

test("event bus - NATS unreachable: Publish keeps succeeding, status degraded with an event queued, everything drains when NATS returns", async (t) => {
  const topo = await startNatsTopology({ edgeDomain: "edge3" });
  t.teardown(() => topo.destroy());
  await topo.leaf.stop();
  const p = startEdgePipeline({
    dbPath: tempDbPath(),
    natsUrl: topo.leaf.url,
    user: topo.kernelUser.user,
    pass: topo.kernelUser.pass,
    edgeId: "edge3",
    edgeDomain: "edge3",
    pruneAfterMs: 0,
  });
  t.teardown(() => p.close());
  const acked = new Set<string>();
  for (let i = 0; i < 50; i++)
    acked.add((await p.publish({ tenant: "acme", subject: "sensor.read.v1", payload: new Uint8Array([i]) })).eventId);
  await waitFor(() => p.bus.status().state === "degraded", "degraded status", 30_000);
  t.regex(p.bus.status().reason ?? "", /nats/);
  const activated = p.db.prepare("SELECT envelope FROM outbox WHERE type = 'degraded.mode.activated.v1'").all() as {
    envelope: Buffer;
  }[];
  t.true(activated.length >= 1);
  const first = activated[0];
  if (first) {
    const payload = fromBinary(DegradedModeActivatedSchema, fromBinary(EventEnvelopeSchema, first.envelope).payload);
    t.is(payload.capability, "event-bus");
    t.is(payload.dependency, "nats");
    t.is(payload.mode, "queue-locally");
  }
  // Nothing is confirmed (or pruned) while nothing reached the hub.
  t.is(
    (
      p.db.prepare("SELECT count(*) AS n FROM outbox WHERE tenant = 'acme' AND published_at IS NULL").get() as {
        n: number;
      }
    ).n,
    50,
  );

  await topo.leaf.start();
  await waitFor(() => p.bus.relay.depth() === 0, "outbox to drain", 60_000);
  await waitFor(() => p.bus.status().state === "ok", "recovered status", 60_000);
  await waitFor(
    async () => {
      const types = (await readStreamEnvelopes(topo.hub.url, topo.hubUser, "NOPS_EDGE_EDGE3").catch(() => [])).map(
        (e) => e.type,
      );
      return types.includes("degraded.mode.recovered.v1") && types.filter((x) => x === "sensor.read.v1").length === 50;
    },
    "events and the degraded/recovered pair at the hub",
    120_000,
    500,
  );
  const atHub = await readStreamEnvelopes(topo.hub.url, topo.hubUser, "NOPS_EDGE_EDGE3");
  t.deepEqual(new Set(atHub.filter((e) => e.tenant === "acme").map((e) => e.id)), acked);
  t.true(atHub.some((e) => e.type === "degraded.mode.activated.v1" && e.tenant === "system"));
  // Confirmed by the hub, then pruned (pruneAfterMs 0).
  await waitFor(
    () => (p.db.prepare("SELECT count(*) AS n FROM outbox WHERE tenant = 'acme'").get() as { n: number }).n === 0,
    "confirmed rows pruned",
    60_000,
  );
  t.is(
    (p.db.prepare("SELECT count(*) AS n FROM outbox_publications").get() as { n: number }).n,
    (p.db.prepare("SELECT count(*) AS n FROM outbox WHERE published_at IS NOT NULL").get() as { n: number }).n,
  );
});

test("event bus - a full edge stream pauses the relay (degraded) and drops nothing; raising the limit drains it", async (t) => {
  const topo = await startNatsTopology({ edgeDomain: "edge4" });
  t.teardown(() => topo.destroy());
  const dbPath = tempDbPath();
  const common = {
    dbPath,
    natsUrl: topo.leaf.url,
    user: topo.kernelUser.user,
    pass: topo.kernelUser.pass,
    edgeId: "edge4",
    edgeDomain: "edge4",
  };
  const small = startEdgePipeline({ ...common, streamMaxBytes: 16 * 1024 });
  await waitFor(() => small.bus.jetstream() !== undefined, "connected", 60_000);
  const acked = new Set<string>();
  for (let i = 0; i < 200; i++)
    acked.add(
      (await small.publish({ tenant: "acme", subject: "bulk.v1", payload: new Uint8Array(200).fill(i) })).eventId,
    );
  await waitFor(
    () => /nats-stream: edge stream full/.test(small.bus.status().reason ?? ""),
    "stream-full degradation",
    60_000,
  );
  t.true(small.bus.relay.depth() > 0);
  await small.close();

  const big = startEdgePipeline({ ...common, streamMaxBytes: 16 * 1024 * 1024 });
  t.teardown(() => big.close());
  await waitFor(() => big.bus.relay.depth() === 0, "drained after the limit was raised", 60_000);
  const leaf = (await readStreamEnvelopes(topo.leaf.url, topo.kernelUser, "NOPS_EVENTS")).filter(
    (e) => e.tenant === "acme",
  );
  t.is(leaf.length, 200);
  t.deepEqual(new Set(leaf.map((e) => e.id)), acked);
});
