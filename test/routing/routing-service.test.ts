import test from "ava";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, createContextValues, createHandlerContext } from "@connectrpc/connect";
import { createNoopMeter } from "@opentelemetry/api";
import {
  InvokeRequestSchema,
  InvokeStreamRequestSchema,
  RouteRequestSchema,
  RouteMode,
  RoutingService,
} from "../../gen/nops/kernel/v1/routing_pb.js";
import { systemClock } from "../../src/common/clock.js";
import { ConfigError } from "../../src/common/errors.js";
import { createRouter } from "../../src/routing/router.js";
import { resolveRoutingOptions } from "../../src/routing/routing-options.js";
import { createRoutingService, resolveRoutingServiceOptions } from "../../src/routing/routing-service.js";
import { kCorrelationId } from "../../src/server/interceptor.js";
import { createSilentLogger } from "../../src/telemetry/logger.js";
import { startEchoAgent } from "./fixtures/echo-agent.js";
import { createFakeRoutableAgents, echoAgentRecord } from "./fixtures/fake-routable-agents.js";

const TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

async function setup(t: { teardown(fn: () => unknown): void }) {
  const agent = await startEchoAgent({ name: "svc" });
  t.teardown(() => agent.close());
  const registry = createFakeRoutableAgents([
    echoAgentRecord("svc", `grpc://127.0.0.1:${agent.port}`, { labels: { zone: "a" } }),
  ]);
  const router = createRouter(
    {
      agents: registry,
      egress: () => undefined, // no guard in this unit test: it exercises the service
      clock: systemClock,
      logger: createSilentLogger(),
      meter: createNoopMeter(),
    },
    resolveRoutingOptions({}),
  );
  t.teardown(() => router.close());
  const service = createRoutingService({ router }, resolveRoutingServiceOptions({}));
  const ctx = (method: (typeof RoutingService.method)[keyof typeof RoutingService.method], timeoutMs?: number) =>
    createHandlerContext({
      service: RoutingService,
      method,
      protocolName: "grpc",
      requestMethod: "POST",
      url: "http://127.0.0.1/x",
      timeoutMs,
      requestHeader: { traceparent: TRACEPARENT },
      contextValues: createContextValues().set(kCorrelationId, "corr-1"),
    });
  return { agent, service, ctx };
}

test("routing service - Invoke returns the agent's answer and propagates deadline and traceparent", async (t) => {
  const { agent, service, ctx } = await setup(t);
  const before = Date.now();
  const res = await service.invoke(
    create(InvokeRequestSchema, { tenant: "t1", capability: "echo", payload: new TextEncoder().encode("ping") }),
    ctx(RoutingService.method.invoke, 2_000),
  );
  t.is(new TextDecoder().decode(res.payload), "ping");
  t.is(res.agentName, "svc");
  t.is(res.attempts, 1);
  t.is(agent.stats.traceparents[0], TRACEPARENT);
  const hopDeadline = agent.stats.invocationDeadlines[0]!;
  t.true(
    hopDeadline > before && hopDeadline <= Date.now() + 2_000,
    "the hop carries the caller's 2 s deadline, not a longer one",
  );
});

test("routing service - InvokeStream relays every chunk; Route explains its choice; bad input is INVALID_ARGUMENT", async (t) => {
  const { service, ctx } = await setup(t);
  const chunks = [];
  for await (const c of service.invokeStream(
    create(InvokeStreamRequestSchema, { tenant: "t1", capability: "echo", payload: new Uint8Array([1]) }),
    ctx(RoutingService.method.invokeStream, 2_000),
  )) {
    chunks.push(c.contentType);
  }
  t.deepEqual(chunks, ["chunk/0", "chunk/1", "chunk/2"]);
  const route = await service.route(
    create(RouteRequestSchema, { tenant: "t1", capability: "echo" }),
    ctx(RoutingService.method.route),
  );
  t.is(route.agent?.name, "svc");
  t.is(route.mode, RouteMode.SCORED);
  t.truthy(route.reason);
  const none = await t.throwsAsync(async () =>
    service.route(
      create(RouteRequestSchema, { tenant: "t1", capability: "echo", constraints: { labels: { zone: "b" } } }),
      ctx(RoutingService.method.route),
    ),
  );
  t.is(ConnectError.from(none).code, Code.Unavailable);
  const bad = await t.throwsAsync(async () =>
    service.invoke(
      create(InvokeRequestSchema, { tenant: "Bad Tenant", capability: "echo" }),
      ctx(RoutingService.method.invoke),
    ),
  );
  t.is(ConnectError.from(bad).code, Code.InvalidArgument);
});

test("routing options - defaults and errors that name the field", (t) => {
  const o = resolveRoutingOptions({});
  t.is(o.retry.budgetRatio, 0.2);
  t.is(o.circuitBreaker.consecutiveFailures, 5);
  t.throws(() => resolveRoutingOptions({ retry: { maxAttempts: 0 } }), {
    instanceOf: ConfigError,
    message: /routing\.retry\.maxAttempts must be an integer >= 1/,
  });
  t.throws(() => resolveRoutingOptions({ routes: [{ capability: "x", targets: [{ agent: "a", weight: -1 }] }] }), {
    instanceOf: ConfigError,
    message: /routing\.routes\[0\]\.targets\[0\]\.weight/,
  });
  t.throws(() => resolveRoutingOptions({ scoring: { nope: 1 } as never }), {
    instanceOf: ConfigError,
    message: /routing\.scoring\.nope/,
  });
  t.throws(() => resolveRoutingServiceOptions({ maxPayloadBytes: 0 }), {
    instanceOf: ConfigError,
    message: /maxPayloadBytes/,
  });
});
