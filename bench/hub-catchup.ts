// Hub catch-up bench (issue 15): an edge linked with its own identity (per-edge user and
// permissions) to a 1-node and a 3-node hub (hub stream R1 / R3). The edge's link is cut with a
// TCP proxy, --backlog events are published at the edge, the link is healed, and the bench times
// heal -> first event at the hub (reconnect + source re-creation) and heal -> all at the hub.
// Run: node --import tsx bench/hub-catchup.ts [--backlog 20000]
import { performance } from "node:perf_hooks";
import { connect } from "@nats-io/transport-node";
import { jetstreamManager } from "@nats-io/jetstream";
import { startEdgeFleet, type EdgeFleet } from "../test/helpers/nats-fleet.js";
import { waitFor } from "../test/helpers/processes.js";
import { startEdgePipeline, tempDbPath } from "../test/events/edge-pipeline.js";
import { hubEdgeStreamName } from "../src/events/nats-config.js";

const i = process.argv.indexOf("--backlog");
const BACKLOG = i >= 0 ? Number(process.argv[i + 1]) : 20_000;
if (!Number.isInteger(BACKLOG) || BACKLOG <= 0) throw new Error("--backlog must be a positive integer");
const STREAM = hubEdgeStreamName("edge-a");

async function count(fleet: EdgeFleet): Promise<number> {
  const nc = await connect({ servers: fleet.hubUrls, user: fleet.hubUser.user, pass: fleet.hubUser.pass });
  try {
    return (await (await jetstreamManager(nc, { timeout: 5000 })).streams.info(STREAM)).state.messages;
  } finally {
    await nc.close();
  }
}

async function run(hubNodes: 1 | 3): Promise<void> {
  const fleet = await startEdgeFleet({ hubNodes, edges: [{ edgeId: "edge-a", tenants: ["acme"] }] });
  try {
    await fleet.createHubStreams();
    const p = startEdgePipeline({
      dbPath: tempDbPath(),
      natsUrl: fleet.edges["edge-a"]!.leaf.url,
      user: fleet.kernelUser.user,
      pass: fleet.kernelUser.pass,
      edgeId: "edge-a",
      edgeDomain: "edge-a",
      ensureHubStream: false,
    });
    try {
      const proxies = fleet.edges["edge-a"]!.proxies;
      for (const x of proxies) x.cut();
      const payload = new Uint8Array(256).fill(7);
      for (let n = 0; n < BACKLOG; n += 200)
        await Promise.all(
          Array.from({ length: Math.min(200, BACKLOG - n) }, () =>
            p.publish({ tenant: "acme", subject: "orders.created.v1", payload }),
          ),
        );
      await waitFor(() => p.bus.relay.depth() === 0, "relay drained into the leaf", 600_000, 100);
      const before = await count(fleet);
      for (const x of proxies) x.heal();
      const healed = performance.now();
      let first = 0;
      await waitFor(
        async () => {
          const c = await count(fleet);
          if (first === 0 && c > before) first = performance.now();
          return c >= before + BACKLOG;
        },
        "backlog at the hub",
        600_000,
        50,
      );
      const done = performance.now();
      const linkedMs = first - healed;
      const drainMs = done - first;
      console.log(
        `hub nodes ${hubNodes} (R${hubNodes}): ${BACKLOG} events; heal -> first at hub ${linkedMs.toFixed(0)} ms; ` +
          `heal -> all ${(done - healed).toFixed(0)} ms (${Math.round(BACKLOG / ((done - healed) / 1000))} msg/s); ` +
          `once linked ${Math.round(BACKLOG / (drainMs / 1000))} msg/s`,
      );
    } finally {
      await p.close();
    }
  } finally {
    await fleet.destroy();
  }
}

await run(1);
await run(3);
