import { randomUUID } from "node:crypto";
import { Code, ConnectError } from "@connectrpc/connect";
import {
  kCorrelationId,
  kLogger,
  kPeer,
  methodPath,
  observeStream,
  withSignal,
  type CallHandler,
  type CallRequest,
  type CallResult,
  type KernelInterceptor,
  type RequestLogger,
} from "./interceptor.js";
import { isClientError, toConnectError } from "./errors.js";
import { context, isSpanContextValid, trace, type Context } from "@opentelemetry/api";
import type { Logger } from "pino";
import { deadlineExceeded } from "../common/index.js";

const REQUEST_ID = "x-request-id";
// Accept caller ids that are safe to log and echo; anything else is replaced, not trusted.
const VALID_REQUEST_ID = /^[A-Za-z0-9._:/-]{1,128}$/;

/** The trace id of the active span, or undefined when there is none (tracing off, or outside a call). */
export function currentTraceId(ctx: Context = context.active()): string | undefined {
  const sc = trace.getSpanContext(ctx);
  return sc && isSpanContextValid(sc) ? sc.traceId : undefined;
}

/** The call's logger: the child carrying the correlation id is made on first use. */
class RequestScopedLogger implements RequestLogger {
  #child: Logger | undefined;
  constructor(
    private readonly parent: Logger,
    private readonly correlationId: string,
  ) {}
  isLevelEnabled(level: string): boolean {
    return this.parent.isLevelEnabled(level);
  }
  get(): Logger {
    return (this.#child ??= this.parent.child({ correlationId: this.correlationId }));
  }
}

/** Correlation id: the trace id, else `x-request-id`, else generated; echoed back, attached to a child logger. */
export function correlationInterceptor(logger: Logger): KernelInterceptor {
  return (next) => (call) => {
    const given = call.ctx.requestHeader.get(REQUEST_ID);
    // Inside a trace the trace id is the correlation id, so logs and spans join on one key.
    const id = currentTraceId() ?? (given && VALID_REQUEST_ID.test(given) ? given : randomUUID());
    call.ctx.values.set(kCorrelationId, id);
    call.ctx.values.set(kLogger, new RequestScopedLogger(logger, id));
    call.ctx.responseHeader.set(REQUEST_ID, id);
    return next(call);
  };
}

function codeName(code: Code | undefined): string {
  return code === undefined ? "OK" : Code[code];
}

/**
 * Access log: one line per call with method, code and duration. Successes log at debug so the
 * hot path costs nothing at the default level; failures at info (caller's fault) or warn.
 */
export function loggingInterceptor(): KernelInterceptor {
  return (next) => async (call) => {
    const started = performance.now();
    const log = (err: unknown) => {
      const logger = call.ctx.values.get(kLogger);
      if (!logger) return;
      const code = err === undefined ? undefined : err instanceof ConnectError ? err.code : Code.Internal;
      const level = code === undefined ? "debug" : isClientError(code) ? "info" : "warn";
      if (!logger.isLevelEnabled(level)) return;
      logger.get()[level](
        {
          rpc: methodPath(call.method),
          code: codeName(code),
          durationMs: Math.round((performance.now() - started) * 1000) / 1000,
          peer: call.ctx.values.get(kPeer).address,
          transport: call.ctx.values.get(kPeer).transport,
          // A caller error echoes its input ("got …"), which may be PII: log only the field it names.
          ...(err instanceof ConnectError && code !== undefined
            ? { error: isClientError(code) ? err.rawMessage.split(":")[0] : err.rawMessage }
            : {}),
        },
        "rpc",
      );
    };
    let result: CallResult;
    try {
      result = await next(call);
    } catch (err) {
      log(err);
      throw err;
    }
    if (result.kind === "unary") {
      log(undefined);
      return result;
    }
    return { kind: "stream", output: observeStream(result.output, log) };
  };
}

/** Maps every error to a ConnectError (see errors.ts); internal causes are logged, never returned. */
export function errorMappingInterceptor(): KernelInterceptor {
  return (next) => async (call) => {
    const map = (err: unknown): ConnectError => {
      if (err instanceof ConnectError) return err;
      const id = call.ctx.values.get(kCorrelationId);
      call.ctx.values
        .get(kLogger)
        ?.get()
        .error({ err, rpc: methodPath(call.method) }, "internal error");
      return toConnectError(err, id);
    };
    let result: CallResult;
    try {
      result = await next(call);
    } catch (err) {
      throw map(err);
    }
    if (result.kind === "unary") return result;
    const source = result.output;
    return {
      kind: "stream",
      output: (async function* () {
        try {
          yield* source;
        } catch (err) {
          throw map(err);
        }
      })(),
    };
  };
}

/**
 * Runs `next` under a context whose signal aborts at `capMs` or when the caller's does, and settles
 * at the first of the handler's answer, the cap and the caller leaving (a handler that ignores its
 * signal is answered for). One promise, one timer and one listener on the caller's signal per call.
 */
function runCapped(next: CallHandler, call: CallRequest, capMs: number): Promise<CallResult> {
  const parent = call.ctx.signal;
  const controller = new AbortController();
  const deadlineAt = Date.now() + capMs;
  let resolve!: (result: CallResult) => void;
  let reject!: (reason: unknown) => void;
  const promise = new Promise<CallResult>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  const release = (): void => {
    clearTimeout(timer);
    parent.removeEventListener("abort", onAbort);
  };
  const stop = (reason: unknown): void => {
    release();
    controller.abort(reason);
    reject(reason);
  };
  const onAbort = (): void => stop(parent.reason);
  const timer = setTimeout(() => stop(deadlineExceeded(`deadline of ${capMs} ms exceeded`)), capMs);
  // A caller already gone: the handler sees an aborted signal (and answers as it does for one).
  if (parent.aborted) controller.abort(parent.reason);
  else parent.addEventListener("abort", onAbort, { once: true });
  const ctx = withSignal(call.ctx, controller.signal, () => Math.max(0, deadlineAt - Date.now()));
  let answer: Promise<CallResult>;
  try {
    answer = next({ ...call, ctx });
  } catch (e) {
    // A handler that throws instead of rejecting fails the call all the same.
    release();
    return Promise.reject(e);
  }
  answer.then(
    (result) => {
      release();
      resolve(result);
    },
    (e: unknown) => {
      release();
      reject(e);
    },
  );
  return promise;
}

/**
 * Deadline cap: a call without a deadline, or with one longer than `maxDeadlineMs`, runs under
 * `maxDeadlineMs` instead; handlers see the capped signal and timeoutMs(). Server streams
 * (watches) are long-lived by design and are capped only by their own deadline.
 */
export function deadlineInterceptor(maxDeadlineMs: number): KernelInterceptor {
  return (next) => (call) => {
    if (call.method.methodKind !== "unary" && call.method.methodKind !== "client_streaming") return next(call);
    const timeout = call.ctx.timeoutMs();
    return timeout !== undefined && timeout <= maxDeadlineMs ? next(call) : runCapped(next, call, maxDeadlineMs);
  };
}
