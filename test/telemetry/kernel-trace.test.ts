// Its own file: a kernel with tracing registers the OpenTelemetry globals for its process.
import test from "ava";
import { ExportResultCode } from "@opentelemetry/core";
import type { ReadableSpan, SpanExporter } from "@opentelemetry/sdk-trace-base";
import { EventBusService } from "../../gen/nops/kernel/v1/event_bus_pb.js";
import { startNatsTopology } from "../helpers/nats-servers.js";
import { startTestKernel } from "../helpers/kernel.js";
import { waitFor } from "../helpers/processes.js";

test("tracing - one trace from a Connect Publish through the handler, SQLite and the outbox to the NATS publish and the consumer", async (t) => {
  const topo = await startNatsTopology({ edgeDomain: "edge-trace" });
  t.teardown(() => topo.destroy());
  // Collects what the kernel exports; unlike InMemorySpanExporter it keeps the spans on shutdown.
  const spans: ReadableSpan[] = [];
  const exporter: SpanExporter = {
    export: (batch, done) => {
      spans.push(...batch);
      done({ code: ExportResultCode.SUCCESS });
    },
    shutdown: async () => undefined,
  };
  const k = await startTestKernel(
    t,
    {
      edgeId: "edge-trace",
      nats: { url: topo.leaf.url },
      events: { natsUser: topo.kernelUser.user, natsPassword: topo.kernelUser.pass, edgeDomain: topo.edgeDomain },
      egress: { tenantTiers: { acme: 1 } },
    },
    { spanExporter: exporter },
  );
  await waitFor(
    () => k.kernel.readiness().dependencies.find((d) => d.name === "nats-leaf")?.state === "ok",
    "event bus connected",
    20_000,
  );
  const bus = k.client(EventBusService, "connect-json");
  const { eventId } = await bus.publish({
    tenant: "acme",
    subject: "orders.created",
    payload: new TextEncoder().encode('{"order":"A-7"}'),
  });

  const abort = new AbortController();
  let delivered = "";
  for await (const res of k
    .client(EventBusService, "grpc-js")
    .subscribe(
      { tenant: "acme", consumer: "billing", filter: "orders.>" },
      { signal: abort.signal, timeoutMs: 30_000 },
    )) {
    delivered = res.message?.eventId ?? res.message?.subject ?? "received";
    break;
  }
  abort.abort();
  t.truthy(delivered, "the consumer received the event");
  await k.kernel.stop(); // flushes the batch span processor

  const publish = spans.find((s) => s.name === "nops.kernel.v1.EventBusService/Publish");
  t.truthy(publish, spans.map((s) => s.name).join(", "));
  const inTrace = spans.filter((s) => s.spanContext().traceId === publish!.spanContext().traceId).map((s) => s.name);
  t.true(inTrace.includes("sqlite.transaction"), inTrace.join(", "));
  t.true(
    inTrace.some((n) => n.startsWith("outbox.append")),
    inTrace.join(", "),
  );
  t.true(inTrace.includes("publish nops.events.acme.orders.created"), inTrace.join(", "));
  t.true(inTrace.includes("process nops.events.acme.orders.created"), inTrace.join(", "));
  t.truthy(eventId);
});
