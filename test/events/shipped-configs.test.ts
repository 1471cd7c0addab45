import test from "ava";
import { startNatsTopology, waitFor } from "../helpers/nats-servers.js";
import { startEdgePipeline, tempDbPath } from "./edge-pipeline.js";
import { readStreamEnvelopes } from "./hub-reader.js";

test("nats configs - the shipped nats/hub.conf and nats/leaf.conf carry edge events to the hub", async (t) => {
  const topo = await startNatsTopology({ shipped: true, edgeDomain: "edge-shipped" });
  t.teardown(() => topo.destroy());
  const p = startEdgePipeline({
    dbPath: tempDbPath(),
    natsUrl: topo.leaf.url,
    user: topo.kernelUser.user,
    pass: topo.kernelUser.pass,
    edgeId: "edge-shipped",
    edgeDomain: "edge-shipped",
  });
  t.teardown(() => p.close());
  const ids = new Set<string>();
  for (let i = 0; i < 20; i++) ids.add((await p.publish({ tenant: "acme", subject: "ping.v1" })).eventId);
  await waitFor(
    async () => {
      const got = await readStreamEnvelopes(topo.hub.url, topo.hubUser, "NOPS_EDGE_EDGE_SHIPPED").catch(() => []);
      return [...ids].every((id) => got.some((e) => e.id === id));
    },
    "events at the hub",
    120_000,
    500,
  );
  t.pass();
});
