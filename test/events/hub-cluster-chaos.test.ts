import test from "ava";
import { connect } from "@nats-io/transport-node";
import { jetstreamManager } from "@nats-io/jetstream";
import { startEdgeFleet, type EdgeFleet } from "../helpers/nats-fleet.js";
import { waitFor } from "../helpers/processes.js";
import { startEdgePipeline, tempDbPath, type EdgePipeline } from "./edge-pipeline.js";
import { countIds, readStreamEnvelopes } from "./hub-reader.js";
import { hubEdgeStreamName } from "../../src/events/nats-config.js";

const EDGES = [
  { edgeId: "edge-a", tenants: ["acme"] },
  { edgeId: "edge-b", tenants: ["globex"] },
  { edgeId: "edge-c", tenants: ["initech"] },
] as const;

/** Message count of a hub stream, asked of any hub node that answers (0 while none does). */
async function hubCount(fleet: EdgeFleet, stream: string): Promise<number> {
  const nc = await connect({ servers: fleet.hubUrls, user: fleet.hubUser.user, pass: fleet.hubUser.pass });
  try {
    const jsm = await jetstreamManager(nc, { timeout: 5000 });
    return (await jsm.streams.info(stream)).state.messages;
  } finally {
    await nc.close();
  }
}

/** Outbox rows not yet confirmed at the hub: the edge's lag. */
function lag(p: EdgePipeline): number {
  return (p.db.prepare("SELECT count(*) AS n FROM outbox WHERE confirmed_at IS NULL").get() as { n: number }).n;
}

test.serial(
  "chaos - 3 kernels, 3 hub nodes: edge cut ~30 s, a hub node killed -9 and restarted, link healed: every acknowledged event at the hub exactly once, lag back to zero",
  async (t) => {
    t.timeout(20 * 60_000);
    const fleet = await startEdgeFleet({ hubNodes: 3, edges: EDGES.map((e) => ({ ...e })) });
    t.teardown(() => fleet.destroy());
    await fleet.createHubStreams();
    const pipes = EDGES.map((e) =>
      startEdgePipeline({
        dbPath: tempDbPath(),
        natsUrl: fleet.edges[e.edgeId]!.leaf.url,
        user: fleet.kernelUser.user,
        pass: fleet.kernelUser.pass,
        edgeId: e.edgeId,
        edgeDomain: e.edgeId,
        ensureHubStream: false,
        hubRequestTimeoutMs: 3000,
      }),
    );
    const acked = EDGES.map(() => new Set<string>());
    const refused: string[] = [];
    let running = true;
    t.teardown(async () => {
      running = false;
      await Promise.all(load);
      await Promise.all(pipes.map((p) => p.close()));
    });

    // Steady load: every kernel publishes about 50 events a second until told to stop.
    const load = pipes.map(async (p, i) => {
      while (running) {
        try {
          acked[i]!.add((await p.publish({ tenant: EDGES[i]!.tenants[0], subject: "orders.created.v1" })).eventId);
        } catch (err) {
          refused.push(String(err));
        }
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
    });
    const a = fleet.edges["edge-a"]!;
    await waitFor(
      async () => {
        for (const [i, e] of EDGES.entries())
          if (acked[i]!.size < 50 || (await hubCount(fleet, hubEdgeStreamName(e.edgeId))) < 50) return false;
        return true;
      },
      "steady flow from every edge to the hub",
      120_000,
      500,
    );

    // Cut edge A's link to every hub node for ~30 s; meanwhile kill -9 one hub node and restart it.
    for (const p of a.proxies) p.cut();
    const cutAt = Date.now();
    await waitFor(
      () =>
        pipes[0]!.bus.confirmNow().then(
          () => false,
          () => true,
        ),
      "edge A to lose the hub",
      60_000,
      250,
    );
    await fleet.hubs[1]!.kill9();
    // The two remaining nodes keep serving B and C (R3 streams keep a quorum).
    const bBefore = acked[1]!.size;
    await waitFor(
      async () => (await hubCount(fleet, hubEdgeStreamName("edge-b"))) >= bBefore,
      "B's events at the hub with one node down",
      120_000,
      500,
    );
    await fleet.hubs[1]!.start();
    const rest = 30_000 - (Date.now() - cutAt);
    if (rest > 0) await new Promise((resolve) => setTimeout(resolve, rest));
    const backlog = acked[0]!.size;
    const heldAtHeal = await hubCount(fleet, hubEdgeStreamName("edge-a"));
    t.true(heldAtHeal < backlog, "the cut held edge A's events back");
    for (const p of a.proxies) p.heal();
    const healedAt = Date.now();
    await waitFor(
      async () => (await hubCount(fleet, hubEdgeStreamName("edge-a"))) >= backlog,
      "edge A's backlog at the hub",
      300_000,
      250,
    );
    const caughtUpMs = Date.now() - healedAt;
    t.log(
      `edge A: link cut ${Math.round((healedAt - cutAt) / 1000)} s; ${backlog} events acknowledged, hub held ${heldAtHeal}; heal -> caught up in ${caughtUpMs} ms`,
    );

    running = false;
    await Promise.all(load);
    t.deepEqual(refused, [], "the kernels accepted every Publish throughout (store and forward)");
    for (const [i, e] of EDGES.entries()) {
      const stream = hubEdgeStreamName(e.edgeId);
      await waitFor(
        async () => (await hubCount(fleet, stream)) >= acked[i]!.size,
        `${e.edgeId}'s events at the hub`,
        300_000,
        500,
      );
      // The count above includes the kernel's own system events: read until every acknowledged
      // event has arrived (or the wait times out and the assertions below say which are missing).
      let all: Awaited<ReturnType<typeof readStreamEnvelopes>> = [];
      await waitFor(
        async () => {
          all = await readStreamEnvelopes(fleet.hubUrls, fleet.hubUser, stream);
          const ids = new Set(all.map((x) => x.id));
          return [...acked[i]!].every((id) => ids.has(id));
        },
        `every acknowledged event of ${e.edgeId} at the hub`,
        120_000,
        1000,
      ).catch(() => undefined);
      t.deepEqual(
        [...countIds(all)].filter(([, n]) => n > 1),
        [],
        `${e.edgeId}: no event twice in its hub stream (the kernel's own degraded-mode events included)`,
      );
      // Besides the load, the stream holds only the kernel's degraded/recovered events (system tenant).
      t.deepEqual(
        [...new Set(all.map((x) => x.tenant))].filter((x) => x !== e.tenants[0] && x !== "system"),
        [],
      );
      const envelopes = all.filter((x) => x.tenant === e.tenants[0]);
      const counts = countIds(envelopes);
      t.deepEqual(
        [...acked[i]!].filter((id) => counts.get(id) !== 1),
        [],
        `${e.edgeId}: every acknowledged event at the hub exactly once`,
      );
      t.is(envelopes.length, acked[i]!.size, `${e.edgeId}: nothing else in its hub stream`);
      await waitFor(
        async () => {
          await pipes[i]!.bus.confirmNow().catch(() => undefined);
          return lag(pipes[i]!) === 0;
        },
        `${e.edgeId}'s lag back to zero`,
        120_000,
        500,
      );
    }
    t.log(`acknowledged: ${acked.map((s, i) => `${EDGES[i]!.edgeId} ${s.size}`).join(", ")}`);
  },
);

test.serial(
  "clustered hub - the kernel creates its hub stream with events.hubStreamReplicas (3) when its user may",
  async (t) => {
    const fleet = await startEdgeFleet({
      hubNodes: 3,
      edges: [{ edgeId: "edge-r", tenants: ["acme"], createHubStream: true }],
    });
    t.teardown(() => fleet.destroy());
    const p = startEdgePipeline({
      dbPath: tempDbPath(),
      natsUrl: fleet.edges["edge-r"]!.leaf.url,
      user: fleet.kernelUser.user,
      pass: fleet.kernelUser.pass,
      edgeId: "edge-r",
      edgeDomain: "edge-r",
      hubStreamReplicas: 3,
    });
    t.teardown(() => p.close());
    const id = (await p.publish({ tenant: "acme", subject: "ping.v1" })).eventId;
    await waitFor(() => p.bus.confirmNow().then((seq) => seq >= 1), "the event confirmed by the hub", 120_000, 500);
    const nc = await connect({ servers: fleet.hubUrls, user: fleet.hubUser.user, pass: fleet.hubUser.pass });
    t.teardown(() => nc.close());
    const info = await (await jetstreamManager(nc)).streams.info(hubEdgeStreamName("edge-r"));
    t.is(info.config.num_replicas, 3);
    t.is(info.cluster?.replicas?.length, 2, "a leader and two replicas");
    t.deepEqual(
      // (The kernel's own degraded-mode events, if the link came up late, are under the system tenant.)
      (await readStreamEnvelopes(fleet.hubUrls, fleet.hubUser, hubEdgeStreamName("edge-r")))
        .filter((e) => e.tenant === "acme")
        .map((e) => e.id),
      [id],
    );
  },
);
