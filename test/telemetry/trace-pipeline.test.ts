import { grpcInstrumentation } from "./grpc-instrumentation.js";
import test, { type ExecutionContext } from "ava";
import * as grpc from "@grpc/grpc-js";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport } from "@connectrpc/connect-node";
import { SpanKind, context, trace } from "@opentelemetry/api";
import { InMemorySpanExporter, type ReadableSpan } from "@opentelemetry/sdk-trace-node";
import {
  AgentRegistryService,
  RegisterAgentRequestSchema,
  RegisterAgentResponseSchema,
} from "../../gen/nops/kernel/v1/agent_registry_pb.js";
import { EventEnvelopeSchema } from "../../gen/nops/events/v1/envelope_pb.js";
import { createManualClock } from "../../src/common/clock.js";
import { DEFAULT_KERNEL_OPTIONS } from "../../src/kernel/kernel-options.js";
import { createAuditLog } from "../../src/audit/audit-log.js";
import { createRegistry } from "../../src/registry/registry.js";
import { createRegistryService } from "../../src/registry/registry-service.js";
import { bindService } from "../../src/server/bind-service.js";
import { correlationInterceptor, errorMappingInterceptor } from "../../src/server/core-interceptors.js";
import { createGrpcServer } from "../../src/server/grpc-server.js";
import { createHttpServer } from "../../src/server/http-server.js";
import { openDatabase } from "../../src/store/database.js";
import { migrateUp } from "../../src/store/migrator.js";
import { MIGRATIONS } from "../../src/store/migrations/index.js";
import { createOutbox } from "../../src/store/outbox.js";
import { createSqliteOutboxStore } from "../../src/store/outbox-store.js";
import { createSilentLogger } from "../../src/telemetry/logger.js";
import { createTelemetry } from "../../src/telemetry/telemetry.js";
import { DEFAULT_TELEMETRY_OPTIONS } from "../../src/telemetry/telemetry-options.js";
import { connectTracingInterceptor } from "../../src/telemetry/connect-tracing-interceptor.js";
import { tracingInterceptor } from "../../src/telemetry/tracing-interceptor.js";
import { tracingEventSink } from "../../src/telemetry/tracing-event-sink.js";
import { traceDatabaseTransactions } from "../../src/telemetry/trace-database-transactions.js";
import { startConsumerSpan, startProducerSpan } from "../../src/telemetry/trace-context.js";
import { currentTraceId } from "../../src/server/core-interceptors.js";
import { createServer as createHttpEchoServer } from "node:http";
import type { AddressInfo } from "node:net";
import { createJsonPost } from "../../src/clients/json-http.js";
import type { EgressGuard } from "../../src/egress/egress-guard.js";

const agent = { tenant: "acme", name: "summarizer", version: "1.0.0", endpoint: "127.0.0.1:50061" };

// Spans export through one provider per worker process: the OpenTelemetry globals (context
// manager, propagator) are process-wide, so the tests of this file run one after another.
async function startPipeline(t: ExecutionContext) {
  const exporter = new InMemorySpanExporter();
  const logger = createSilentLogger();
  const telemetry = createTelemetry(DEFAULT_TELEMETRY_OPTIONS, { logger, spanExporter: exporter, grpcInstrumentation });
  const tracer = telemetry.tracer("test");
  const clock = createManualClock(1_700_000_000_000);
  const db = openDatabase({ path: ":memory:" });
  migrateUp(db, MIGRATIONS);
  traceDatabaseTransactions(db, tracer);
  const events = tracingEventSink(createOutbox(createSqliteOutboxStore(db), { source: "edge-1", clock }), tracer);
  const registry = createRegistry(
    { db, events, audit: createAuditLog(db, clock), clock, logger },
    DEFAULT_KERNEL_OPTIONS.registry,
  );
  const seen: { traceId?: string }[] = [];
  const chain = [tracingInterceptor(tracer), correlationInterceptor(logger), errorMappingInterceptor()];
  const impl = createRegistryService({ registry, actorOf: () => "test", clock }, DEFAULT_KERNEL_OPTIONS.registry);
  const registerAgent = impl.registerAgent.bind(impl);
  impl.registerAgent = (req, ctx) => {
    seen.push({ traceId: currentTraceId() });
    return registerAgent(req, ctx);
  };
  const services = [bindService(AgentRegistryService, impl, chain)];
  const grpcServer = createGrpcServer({ services, limits: DEFAULT_KERNEL_OPTIONS.limits });
  const httpServer = createHttpServer({ services, routes: {}, limits: DEFAULT_KERNEL_OPTIONS.limits });
  const grpcPort = await grpcServer.listen("127.0.0.1", 0, grpc.ServerCredentials.createInsecure());
  const httpPort = await httpServer.listen("127.0.0.1", 0);
  t.teardown(async () => {
    await Promise.all([grpcServer.shutdown(0), httpServer.shutdown(0)]);
    registry.close();
    db.close();
    await telemetry.shutdown();
  });
  const spans = async (): Promise<ReadableSpan[]> => {
    await telemetry.forceFlush();
    return exporter.getFinishedSpans();
  };
  const outboxEnvelopes = () =>
    (db.prepare("SELECT envelope FROM outbox ORDER BY id").all() as { envelope: Buffer }[]).map((r) =>
      fromBinary(EventEnvelopeSchema, r.envelope),
    );
  return { tracer, grpcPort, httpPort, spans, outboxEnvelopes, seen };
}

function parentOf(span: ReadableSpan): string | undefined {
  return span.parentSpanContext?.spanId;
}

function byName(spans: ReadableSpan[], predicate: (s: ReadableSpan) => boolean, what: string): ReadableSpan {
  const found = spans.find(predicate);
  if (!found) throw new Error(`no ${what} span among ${spans.map((s) => s.name).join(", ")}`);
  return found;
}

/** Asserts client -> server -> sqlite.transaction -> outbox.append in one trace, and the row's traceparent. */
function assertChain(t: ExecutionContext, spans: ReadableSpan[], envelopeTraceparent: string, client: ReadableSpan) {
  const traceId = client.spanContext().traceId;
  const server = byName(spans, (s) => s.kind === SpanKind.SERVER && s.spanContext().traceId === traceId, "server");
  const txn = byName(
    spans,
    (s) => s.name === "sqlite.transaction" && parentOf(s) === server.spanContext().spanId,
    "sqlite.transaction under the server span",
  );
  const append = byName(spans, (s) => s.name === "outbox.append agent.registered.v1", "outbox.append");
  t.is(parentOf(server), client.spanContext().spanId, "server span is the client span's child");
  t.is(txn.spanContext().traceId, traceId);
  t.is(parentOf(append), txn.spanContext().spanId, "the outbox append runs inside the transaction");
  t.is(append.spanContext().traceId, traceId);
  t.is(server.attributes["rpc.service"], "nops.kernel.v1.AgentRegistryService");
  t.is(server.attributes["rpc.method"], "RegisterAgent");
  t.is(envelopeTraceparent, `00-${traceId}-${append.spanContext().spanId}-01`, "the outbox row carries the trace");
}

test.serial("tracing - one trace from a Connect call through the handler and SQLite to the outbox row", async (t) => {
  const p = await startPipeline(t);
  const transport = createConnectTransport({
    baseUrl: `http://127.0.0.1:${p.httpPort}`,
    httpVersion: "1.1",
    interceptors: [connectTracingInterceptor(p.tracer)],
  });
  const res = await createClient(AgentRegistryService, transport).registerAgent(agent);
  t.truthy(res.agent?.id);
  const spans = await p.spans();
  const client = byName(
    spans,
    (s) => s.kind === SpanKind.CLIENT && s.name === "nops.kernel.v1.AgentRegistryService/RegisterAgent",
    "client",
  );
  t.is(parentOf(client), undefined, "the client span is the root");
  const [envelope] = p.outboxEnvelopes();
  assertChain(t, spans, envelope!.traceparent, client);
  t.is(p.seen[0]?.traceId, client.spanContext().traceId, "the handler sees the trace id (the correlation id source)");
});

test.serial("tracing - one trace from a gRPC call (instrumentation-grpc on grpc-js) to the outbox row", async (t) => {
  const p = await startPipeline(t);
  const transport = createGrpcTransport({
    baseUrl: `http://127.0.0.1:${p.grpcPort}`,
    interceptors: [connectTracingInterceptor(p.tracer)],
  });
  await createClient(AgentRegistryService, transport).registerAgent(agent);
  const spans = await p.spans();
  const client = byName(spans, (s) => s.kind === SpanKind.CLIENT, "client");
  const server = byName(spans, (s) => s.kind === SpanKind.SERVER, "server");
  t.is(
    server.instrumentationScope.name,
    "@opentelemetry/instrumentation-grpc",
    "grpc-js server span comes from instrumentation-grpc",
  );
  t.is(
    server.attributes["nops.transport"],
    "grpc-js",
    "the kernel interceptor annotated it instead of nesting another span",
  );
  t.is(spans.filter((s) => s.kind === SpanKind.SERVER).length, 1);
  assertChain(t, spans, p.outboxEnvelopes()[0]!.traceparent, client);
});

test.serial(
  "tracing - a native grpc-js client call carries the active trace (instrumentation-grpc client side)",
  async (t) => {
    const p = await startPipeline(t);
    const client = new grpc.Client(`127.0.0.1:${p.grpcPort}`, grpc.credentials.createInsecure());
    t.teardown(() => client.close());
    const root = p.tracer.startSpan("caller");
    await context.with(
      trace.setSpan(context.active(), root),
      () =>
        new Promise<void>((resolve, reject) => {
          client.makeUnaryRequest(
            "/nops.kernel.v1.AgentRegistryService/RegisterAgent",
            (m: typeof agent) =>
              Buffer.from(toBinary(RegisterAgentRequestSchema, create(RegisterAgentRequestSchema, m))),
            (b: Buffer) => fromBinary(RegisterAgentResponseSchema, b),
            agent,
            new grpc.Metadata(),
            (err) => (err ? reject(err) : resolve()),
          );
        }),
    );
    root.end();
    const spans = await p.spans();
    const grpcClient = byName(spans, (s) => s.kind === SpanKind.CLIENT, "grpc client");
    t.is(parentOf(grpcClient), root.spanContext().spanId);
    assertChain(t, spans, p.outboxEnvelopes()[0]!.traceparent, grpcClient);
  },
);

test.serial("tracing - the relay and a consumer continue the trace from EventEnvelope.traceparent", async (t) => {
  const p = await startPipeline(t);
  const transport = createConnectTransport({
    baseUrl: `http://127.0.0.1:${p.httpPort}`,
    httpVersion: "1.1",
    interceptors: [connectTracingInterceptor(p.tracer)],
  });
  await createClient(AgentRegistryService, transport).registerAgent(agent);
  const envelope = p.outboxEnvelopes()[0]!;
  // What the outbox relay does per row, and what a consumer does per message (docs/observability.md).
  const producer = startProducerSpan(p.tracer, "nops.events.acme.agent.registered.v1", envelope.traceparent);
  producer.span.end();
  const consumer = startConsumerSpan(
    p.tracer,
    "nops.events.acme.agent.registered.v1",
    producer.headers,
    envelope.traceparent,
  );
  consumer.end();
  const spans = await p.spans();
  const append = byName(spans, (s) => s.name.startsWith("outbox.append"), "outbox.append");
  const publish = byName(spans, (s) => s.kind === SpanKind.PRODUCER && s.name.startsWith("publish "), "publish");
  const process = byName(spans, (s) => s.kind === SpanKind.CONSUMER, "consumer");
  t.is(publish.spanContext().traceId, append.spanContext().traceId);
  t.is(parentOf(publish), append.spanContext().spanId);
  t.is(parentOf(process), publish.spanContext().spanId);
  t.is(process.spanContext().traceId, append.spanContext().traceId);
  t.regex(
    producer.headers.traceparent ?? "",
    new RegExp(`^00-${append.spanContext().traceId}-${publish.spanContext().spanId}-01$`),
  );
});

test.serial("tracing - an approved HTTP client call (guarded fetch) carries the active trace", async (t) => {
  const p = await startPipeline(t);
  const received: (string | undefined)[] = [];
  const server = createHttpEchoServer((req, res) => {
    received.push(req.headers.traceparent as string | undefined);
    res.setHeader("content-type", "application/json");
    res.end("{}");
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  t.teardown(() => new Promise<void>((resolve) => server.close(() => resolve())));
  const { port } = server.address() as AddressInfo;
  const allowAll = {
    check: async () => ({ allowed: true, reason: "allowed", tier: "1", classification: "D1", cached: true }),
  } as unknown as EgressGuard;
  const post = createJsonPost(allowAll, "billing", { baseUrl: `http://127.0.0.1:${port}` });
  const root = p.tracer.startSpan("caller");
  await context.with(trace.setSpan(context.active(), root), () => post("acme", "/v1/usage", { units: 1 }));
  root.end();
  await post("acme", "/v1/usage", { units: 2 });
  t.is(received[0], `00-${root.spanContext().traceId}-${root.spanContext().spanId}-01`);
  t.is(received[1], undefined, "no active trace, no traceparent");
});
