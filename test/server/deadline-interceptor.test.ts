import test from "ava";
import type { DescMethod } from "@bufbuild/protobuf";
import { Code, ConnectError, createContextValues, createHandlerContext } from "@connectrpc/connect";
import { AgentRegistryService } from "../../gen/nops/kernel/v1/agent_registry_pb.js";
import { deadlineInterceptor } from "../../src/server/core-interceptors.js";
import type { CallHandler, CallRequest, CallResult } from "../../src/server/interceptor.js";

const unary = AgentRegistryService.method.getAgent;
const watch = AgentRegistryService.method.watchAgents;
const CAP_MS = 40;

function call(method: DescMethod = unary, init: { timeoutMs?: number; requestSignal?: AbortSignal } = {}) {
  const ctx = createHandlerContext({
    service: AgentRegistryService,
    method,
    protocolName: "grpc",
    requestMethod: "POST",
    url: `/${AgentRegistryService.typeName}/${method.name}`,
    contextValues: createContextValues(),
    ...init,
  });
  return { ctx, request: { service: AgentRegistryService, method, ctx, input: {} } satisfies CallRequest };
}

const answered: CallResult = { kind: "unary", output: "ok" };

test("deadline cap - a call within the cap runs on the caller's own context", async (t) => {
  let seen: CallRequest | undefined;
  const { request } = call(unary, { timeoutMs: 10_000 });
  const handler: CallHandler = (c) => {
    seen = c;
    return Promise.resolve(answered);
  };
  t.is(await deadlineInterceptor(60_000)(handler)(request), answered);
  t.is(seen?.ctx, request.ctx);
});

test("deadline cap - a call with no deadline runs under the cap and is answered DEADLINE_EXCEEDED when a handler ignores its signal", async (t) => {
  let seen: CallRequest | undefined;
  const { request } = call();
  const handler: CallHandler = (c) => {
    seen = c;
    return new Promise<CallResult>(() => undefined); // never answers
  };
  const err = await t.throwsAsync(deadlineInterceptor(CAP_MS)(handler)(request));
  t.is(ConnectError.from(err).code, Code.DeadlineExceeded);
  t.not(seen?.ctx, request.ctx);
  t.true(seen!.ctx.signal.aborted, "the handler's signal is aborted at the cap");
  t.is(ConnectError.from(seen!.ctx.signal.reason).code, Code.DeadlineExceeded);
  t.false(request.ctx.signal.aborted, "the caller's own signal is left alone");
});

test("deadline cap - a longer caller deadline is capped: the handler sees the cap's remaining time", async (t) => {
  let remaining: number | undefined;
  const { request } = call(unary, { timeoutMs: 60_000 });
  await deadlineInterceptor(5_000)((c) => {
    remaining = c.ctx.timeoutMs();
    return Promise.resolve(answered);
  })(request);
  t.true(remaining !== undefined && remaining <= 5_000 && remaining > 0, `remaining ${remaining}`);
});

test("deadline cap - the caller leaving aborts the capped signal and ends the call with the caller's reason", async (t) => {
  const caller = new AbortController();
  let handlerSignal: AbortSignal | undefined;
  const { request } = call(unary, { requestSignal: caller.signal });
  const pending = deadlineInterceptor(60_000)((c) => {
    handlerSignal = c.ctx.signal;
    return new Promise<CallResult>(() => undefined);
  })(request);
  const reason = new ConnectError("caller went away", Code.Canceled);
  caller.abort(reason);
  const err = await t.throwsAsync(pending);
  t.is(ConnectError.from(err).code, Code.Canceled);
  t.true(handlerSignal!.aborted);
});

test("deadline cap - an answer before the cap is returned and the handler's signal never aborts", async (t) => {
  let handlerSignal: AbortSignal | undefined;
  const { request } = call();
  const result = await deadlineInterceptor(CAP_MS)((c) => {
    handlerSignal = c.ctx.signal;
    return Promise.resolve(answered);
  })(request);
  t.is(result, answered);
  // Past the cap: the timer was cleared with the answer, so nothing aborts afterwards.
  await new Promise((r) => setTimeout(r, CAP_MS * 3));
  t.false(handlerSignal!.aborted);
});

test("deadline cap - a handler's failure is the call's failure, thrown or rejected", async (t) => {
  const boom = new ConnectError("boom", Code.Internal);
  const rejected = deadlineInterceptor(60_000)(() => Promise.reject(boom))(call().request);
  t.is(await t.throwsAsync(rejected), boom);
  const thrown = deadlineInterceptor(60_000)(() => {
    throw boom;
  })(call().request);
  t.is(await t.throwsAsync(thrown), boom);
});

test("deadline cap - server streams are not capped", async (t) => {
  let seen: CallRequest | undefined;
  const { request } = call(watch);
  await deadlineInterceptor(CAP_MS)((c) => {
    seen = c;
    return Promise.resolve(answered);
  })(request);
  t.is(seen?.ctx, request.ctx);
});

// The capped calls share one timer, armed for the oldest: each must still run for its whole cap.
test("deadline cap - calls started apart each end at their own cap, and an answered one ends none", async (t) => {
  const cap = deadlineInterceptor(CAP_MS);
  const never = () => new Promise<CallResult>(() => undefined);
  const run = async (handler: CallHandler) => {
    const started = performance.now();
    try {
      await cap(handler)(call().request);
      return { code: undefined, ms: performance.now() - started };
    } catch (err) {
      return { code: ConnectError.from(err).code, ms: performance.now() - started };
    }
  };
  const first = run(never);
  const early = run(() => Promise.resolve(answered));
  await new Promise((r) => setTimeout(r, CAP_MS / 2));
  const second = run(never);
  for (const ended of [await first, await second]) {
    t.is(ended.code, Code.DeadlineExceeded);
    // Timers fire late on a busy machine, never early: a call ended at another's cap would be short.
    t.true(ended.ms >= CAP_MS - 1, `ran ${ended.ms.toFixed(1)} ms of a ${CAP_MS} ms cap`);
  }
  t.is((await early).code, undefined);
});

test("deadline cap - a handler that reads its signal after the caller left finds it aborted, and the call ends with the caller's reason", async (t) => {
  const caller = new AbortController();
  const reason = new ConnectError("caller went away", Code.Canceled);
  let read!: () => AbortSignal;
  const { request } = call(unary, { requestSignal: caller.signal });
  const pending = deadlineInterceptor(60_000)((c) => {
    read = () => c.ctx.signal;
    return new Promise<CallResult>(() => undefined);
  })(request);
  caller.abort(reason);
  const signal = read();
  t.true(signal.aborted);
  t.is(signal.reason, reason);
  t.is(await t.throwsAsync(pending), reason);
});
