import test from "ava";
import { create } from "@bufbuild/protobuf";
import { connect } from "@nats-io/transport-node";
import { jetstreamManager } from "@nats-io/jetstream";
import { AgentHeartbeatSchema } from "../../gen/nops/events/v1/agent_events_pb.js";
import { createOutbox } from "../../src/store/outbox.js";
import { createSqliteOutboxStore } from "../../src/store/outbox-store.js";
import { systemClock } from "../../src/common/clock.js";
import { startNatsTopology } from "../helpers/nats-servers.js";
import { waitFor } from "../helpers/processes.js";
import { BasicTracerProvider, InMemorySpanExporter, SimpleSpanProcessor } from "@opentelemetry/sdk-trace-base";
import { startEdgePipeline, tempDbPath } from "./edge-pipeline.js";

test("outbox relay - a producer span continues the event's trace and its context rides on the NATS message", async (t) => {
  const topo = await startNatsTopology({ edgeDomain: "edge-tr", startHub: false });
  t.teardown(() => topo.destroy());
  const exporter = new InMemorySpanExporter();
  const provider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] });
  const tracer = provider.getTracer("test");
  const p = startEdgePipeline({
    dbPath: tempDbPath(),
    natsUrl: topo.leaf.url,
    user: topo.kernelUser.user,
    pass: topo.kernelUser.pass,
    edgeId: "edge-tr",
    edgeDomain: topo.edgeDomain,
    ensureHubStream: false,
    tracer,
  });
  t.teardown(() => p.close());
  const traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
  const subject = "nops.events.acme.agent.heartbeat.v1";
  createOutbox(createSqliteOutboxStore(p.db), { source: "edge-tr", clock: systemClock }).append({
    type: "agent.heartbeat.v1",
    tenant: "acme",
    schema: AgentHeartbeatSchema,
    payload: create(AgentHeartbeatSchema, { agentId: "a", tenant: "acme" }),
    traceparent,
  });
  const nc = await connect({ servers: topo.leaf.url, user: topo.kernelUser.user, pass: topo.kernelUser.pass });
  t.teardown(() => nc.close());
  const jsm = await jetstreamManager(nc);
  await waitFor(
    async () => (await jsm.streams.info(p.bus.options.streamName)).state.messages === 1,
    "event in the leaf stream",
    20_000,
  );
  const m = await jsm.streams.getMessage(p.bus.options.streamName, { seq: 1 });
  await waitFor(() => exporter.getFinishedSpans().length === 1, "producer span ended on the PubAck", 10_000);
  const [span] = exporter.getFinishedSpans();
  t.is(span!.name, `publish ${subject}`);
  t.is(
    span!.spanContext().traceId,
    "4bf92f3577b34da6a3ce929d0e0e4736",
    "same trace as the operation that wrote the event",
  );
  t.is(span!.parentSpanContext?.spanId, "00f067aa0ba902b7");
  t.is(
    m?.header?.get("traceparent"),
    `00-4bf92f3577b34da6a3ce929d0e0e4736-${span!.spanContext().spanId}-01`,
    "the message names the producer span",
  );
});
