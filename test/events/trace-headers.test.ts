import test from "ava";
import { create } from "@bufbuild/protobuf";
import { connect } from "@nats-io/transport-node";
import { jetstreamManager } from "@nats-io/jetstream";
import { AgentHeartbeatSchema } from "../../gen/nops/events/v1/agent_events_pb.js";
import { createOutbox } from "../../src/store/outbox.js";
import { systemClock } from "../../src/common/clock.js";
import { startNatsTopology } from "../helpers/nats-servers.js";
import { waitFor } from "../helpers/processes.js";
import { startEdgePipeline, tempDbPath } from "./edge-pipeline.js";

test("outbox relay - an event's trace context rides on its NATS message as a traceparent header", async (t) => {
  const topo = await startNatsTopology({ edgeDomain: "edge-tr", startHub: false });
  t.teardown(() => topo.destroy());
  const p = startEdgePipeline({ dbPath: tempDbPath(), natsUrl: topo.leaf.url, user: topo.kernelUser.user, pass: topo.kernelUser.pass, edgeId: "edge-tr", edgeDomain: topo.edgeDomain, ensureHubStream: false });
  t.teardown(() => p.close());
  const traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
  createOutbox(p.db, { source: "edge-tr", clock: systemClock }).append({
    type: "agent.heartbeat.v1",
    tenant: "acme",
    schema: AgentHeartbeatSchema,
    payload: create(AgentHeartbeatSchema, { agentId: "a", tenant: "acme" }),
    traceparent,
  });
  const nc = await connect({ servers: topo.leaf.url, user: topo.kernelUser.user, pass: topo.kernelUser.pass });
  t.teardown(() => nc.close());
  const jsm = await jetstreamManager(nc);
  await waitFor(async () => (await jsm.streams.info(p.bus.options.streamName)).state.messages === 1, "event in the leaf stream", 20_000);
  const m = await jsm.streams.getMessage(p.bus.options.streamName, { seq: 1 });
  t.is(m?.header?.get("traceparent"), traceparent);
});
