import test from "ava";
import { Code, ConnectError, type HandlerContext } from "@connectrpc/connect";
import { AgentRegistryService } from "../../gen/nops/kernel/v1/agent_registry_pb.js";
import { Health } from "../../gen/grpc/health/v1/health_pb.js";
import { AdminService } from "../../gen/nops/kernel/v1/admin_pb.js";
import type { CallRequest } from "../../src/server/interceptor.js";
import {
  createOverloadGuard,
  createProcessSamplers,
  resolveOverloadOptions,
  type OverloadSamplers,
} from "../../src/server/overload-guard.js";
import { ConfigError } from "../../src/common/errors.js";
import { createSilentLogger } from "../../src/telemetry/logger.js";
import { makeMeter } from "../fixtures/dge-helpers.js";

/** Samplers whose readings the test sets. */
function fakeSamplers(): OverloadSamplers & { loop: number; heap: number; fds: number | undefined } {
  const s = {
    loop: 5,
    heap: 0.3,
    fds: 0.1 as number | undefined,
    eventLoopDelayMs: () => s.loop,
    heapUsedRatio: () => s.heap,
    openFdsRatio: () => s.fds,
  };
  return s;
}

function call(method: CallRequest["method"]): CallRequest & { ctx: { responseHeader: Headers } } {
  const ctx = { responseHeader: new Headers() } as unknown as HandlerContext;
  return { service: method.parent, method, ctx, input: {} };
}

const ok = () => Promise.resolve({ kind: "unary" as const, output: "served" });
const options = resolveOverloadOptions({
  eventLoopDelayMs: 100,
  heapUsedRatio: 0.9,
  openFdsRatio: 0.8,
  consecutiveSamples: 1,
});

test("overload guard - each watermark sheds new calls with UNAVAILABLE and a retry hint; health and status pass", async (t) => {
  const samplers = fakeSamplers();
  const guard = createOverloadGuard({ logger: createSilentLogger(), samplers }, options);
  const handler = guard.interceptor(ok);
  guard.sample();
  t.false(guard.overloaded());
  t.deepEqual(await handler(call(AgentRegistryService.method.listAgents)), { kind: "unary", output: "served" });

  for (const [set, reset, pattern] of [
    [() => (samplers.loop = 180), () => (samplers.loop = 5), /event-loop delay p99 180 ms >= 100 ms/],
    [() => (samplers.heap = 0.95), () => (samplers.heap = 0.3), /heap at 95\.0% >= 90%/],
    [() => (samplers.fds = 0.85), () => (samplers.fds = 0.1), /open-fds at 85\.0% >= 80%/],
  ] as const) {
    set();
    guard.sample();
    t.true(guard.overloaded());
    t.is(guard.status().state, "degraded");
    t.regex(guard.status().detail ?? "", pattern);
    const c = call(AgentRegistryService.method.registerAgent);
    const err = await t.throwsAsync(handler(c));
    const ce = ConnectError.from(err);
    t.is(ce.code, Code.Unavailable);
    t.is(ce.metadata.get("retry-after"), "1");
    t.is(ce.metadata.get("grpc-retry-pushback-ms"), "1000");
    // Health checks and the status stay answerable while shedding.
    t.like(await handler(call(Health.method.check)), { output: "served" });
    t.like(await handler(call(AdminService.method.getStatus)), { output: "served" });
    reset();
    guard.sample();
    t.false(guard.overloaded());
    t.like(await handler(call(AgentRegistryService.method.listAgents)), { output: "served" });
  }
});

test("overload guard - a crossed watermark clears only below recoverRatio (no flapping)", (t) => {
  const samplers = fakeSamplers();
  const guard = createOverloadGuard({ logger: createSilentLogger(), samplers }, options);
  samplers.loop = 120;
  guard.sample();
  t.true(guard.overloaded());
  samplers.loop = 90; // below the 100 ms watermark but above 80% of it
  guard.sample();
  t.true(guard.overloaded());
  samplers.loop = 79;
  guard.sample();
  t.false(guard.overloaded());
  samplers.loop = 90; // rising again below the watermark does not trip
  guard.sample();
  t.false(guard.overloaded());
});

test("overload guard - one bad sample is not overload: the watermark must hold for consecutiveSamples", (t) => {
  const samplers = fakeSamplers();
  const guard = createOverloadGuard(
    { logger: createSilentLogger(), samplers },
    resolveOverloadOptions({ eventLoopDelayMs: 100 }),
  );
  samplers.loop = 400; // one descheduled slice
  guard.sample();
  t.false(guard.overloaded());
  samplers.loop = 5;
  guard.sample();
  samplers.loop = 400;
  guard.sample();
  t.false(guard.overloaded(), "the run restarted");
  guard.sample();
  t.true(guard.overloaded(), "two samples in a row");
});

test("overload guard - a monitor that cannot be read or is switched off never trips", (t) => {
  const samplers = fakeSamplers();
  const guard = createOverloadGuard(
    { logger: createSilentLogger(), samplers },
    resolveOverloadOptions({ heapUsedRatio: 0, eventLoopDelayMs: 100, consecutiveSamples: 1 }),
  );
  samplers.heap = 1;
  samplers.fds = undefined;
  const readings = guard.sample();
  t.false(guard.overloaded());
  t.deepEqual(
    readings.map((r) => r.monitor),
    ["event-loop-delay"],
  );
});

test("overload guard - disabled, it never sheds", async (t) => {
  const samplers = fakeSamplers();
  const guard = createOverloadGuard(
    { logger: createSilentLogger(), samplers },
    resolveOverloadOptions({ enabled: false, eventLoopDelayMs: 100 }),
  );
  samplers.loop = 1000;
  guard.sample();
  t.false(guard.overloaded());
  t.is(guard.status().state, "ok");
  t.like(await guard.interceptor(ok)(call(AgentRegistryService.method.listAgents)), { output: "served" });
});

test("overload guard - gauges report state and pressure; shed calls are counted", async (t) => {
  const meter = makeMeter();
  const samplers = fakeSamplers();
  const guard = createOverloadGuard(
    { logger: createSilentLogger(), samplers, meter: meter.provider.getMeter("t") },
    options,
  );
  samplers.loop = 150;
  guard.sample();
  await t.throwsAsync(guard.interceptor(ok)(call(AgentRegistryService.method.listAgents)));
  const m = await meter.collect();
  t.is(m.get("nops_overload_state")?.[0]?.value, 1);
  t.is(m.get("nops_overload_pressure")?.find((p) => p.attributes.monitor === "event-loop-delay")?.value, 1.5);
  t.like(m.get("nops_overload_shed")?.[0], { attributes: { monitor: "event-loop-delay" }, value: 1 });
});

test("overload guard - the process samplers read the event loop, the heap and /proc/self/fd", async (t) => {
  const s = createProcessSamplers();
  t.teardown(() => s.close?.());
  await new Promise((r) => setTimeout(r, 30));
  const until = performance.now() + 120;
  while (performance.now() < until); // block the loop: the next reading must show it
  await new Promise((r) => setTimeout(r, 30));
  const delay = s.eventLoopDelayMs();
  t.true(delay >= 50, `event-loop delay p99 ${delay} ms`);
  const heap = s.heapUsedRatio();
  t.true(heap > 0 && heap < 1);
  const fds = s.openFdsRatio();
  if (fds === undefined) t.log("no /proc here");
  else t.true(fds > 0 && fds < 1);
});

test("overload guard - options are validated with the field named", (t) => {
  t.throws(() => resolveOverloadOptions({ heapUsedRatio: 2 }), {
    instanceOf: ConfigError,
    message: /admin\.overload\.heapUsedRatio/,
  });
  t.throws(() => resolveOverloadOptions({ exempt: ["grpc.health.v1.Health"] }), {
    message: /admin\.overload\.exempt\[0\]/,
  });
  t.throws(() => resolveOverloadOptions({ shedAll: true }), { message: /admin\.overload\.shedAll/ });
});
