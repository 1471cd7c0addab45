import { randomUUID } from "node:crypto";
import { Code, ConnectError, type HandlerContext } from "@connectrpc/connect";
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
    let result: CallResult;
    try {
      result = await next(call);
    } catch (err) {
      logCall(call, started, err);
      throw err;
    }
    if (result.kind === "unary") {
      logCall(call, started, undefined);
      return result;
    }
    return { kind: "stream", output: observeStream(result.output, (err) => logCall(call, started, err)) };
  };
}

// The access log line of a call that ended with `err` (undefined: OK).
function logCall(call: CallRequest, started: number, err: unknown): void {
  const logger = call.ctx.values.get(kLogger);
  if (!logger) return;
  const code = err === undefined ? undefined : err instanceof ConnectError ? err.code : Code.Internal;
  const level = code === undefined ? "debug" : isClientError(code) ? "info" : "warn";
  if (!logger.isLevelEnabled(level)) return;
  const peer = call.ctx.values.get(kPeer);
  logger.get()[level](
    {
      rpc: methodPath(call.method),
      code: codeName(code),
      durationMs: Math.round((performance.now() - started) * 1000) / 1000,
      peer: peer.address,
      transport: peer.transport,
      // A caller error echoes its input ("got …"), which may be PII: log only the field it names.
      ...(err instanceof ConnectError && code !== undefined
        ? { error: isClientError(code) ? err.rawMessage.split(":")[0] : err.rawMessage }
        : {}),
    },
    "rpc",
  );
}

/** Maps every error to a ConnectError (see errors.ts); internal causes are logged, never returned. */
export function errorMappingInterceptor(): KernelInterceptor {
  return (next) => async (call) => {
    let result: CallResult;
    try {
      result = await next(call);
    } catch (err) {
      throw mapError(call, err);
    }
    if (result.kind === "unary") return result;
    const source = result.output;
    return {
      kind: "stream",
      output: (async function* () {
        try {
          yield* source;
        } catch (err) {
          throw mapError(call, err);
        }
      })(),
    };
  };
}

// `err` as the caller gets it: a ConnectError as it is, anything else logged and scrubbed.
function mapError(call: CallRequest, err: unknown): ConnectError {
  if (err instanceof ConnectError) return err;
  call.ctx.values
    .get(kLogger)
    ?.get()
    .error({ err, rpc: methodPath(call.method) }, "internal error");
  return toConnectError(err, call.ctx.values.get(kCorrelationId));
}

/**
 * A capped call: the context it runs in, and the promise that settles at the first of the handler's
 * answer, the cap and the caller leaving (a handler that ignores its signal is answered for). Its
 * abort signal is made when first read, and only then listens to the caller's: most calls are
 * answered without anyone reading it, and a controller with a listener per call was most of the
 * cap's cost.
 */
class CappedCall {
  /** When the cap ends the call, on the `performance.now()` clock. */
  readonly expiresAt: number;
  readonly ctx: HandlerContext;
  readonly settled: Promise<CallResult>;
  #resolve!: (result: CallResult) => void;
  #reject!: (reason: unknown) => void;
  #done = false;
  #stopped: { reason: unknown } | undefined;
  #controller: AbortController | undefined;
  #onCallerAbort: (() => void) | undefined;

  constructor(
    private readonly parent: HandlerContext,
    private readonly queue: CapQueue,
  ) {
    const expiresAt = (this.expiresAt = performance.now() + queue.capMs);
    this.ctx = withSignal(
      parent,
      () => this.signal(),
      () => Math.max(0, Math.round(expiresAt - performance.now())),
    );
    this.settled = new Promise<CallResult>((resolve, reject) => {
      this.#resolve = resolve;
      this.#reject = reject;
    });
  }

  signal(): AbortSignal {
    if (this.#controller) return this.#controller.signal;
    const controller = (this.#controller = new AbortController());
    const caller = this.parent.signal;
    if (this.#stopped) controller.abort(this.#stopped.reason);
    else if (caller.aborted) this.stop(caller.reason);
    else if (!this.#done) {
      this.#onCallerAbort = () => this.stop(caller.reason);
      caller.addEventListener("abort", this.#onCallerAbort, { once: true });
    }
    return controller.signal;
  }

  /** Settles with the handler's answer, unless the cap or the caller settled first. */
  answer(answer: Promise<CallResult>): void {
    answer.then(
      (result) => this.#settle() && this.#resolve(result),
      (err: unknown) => this.#settle() && this.#reject(err),
    );
  }

  /** Ends the call with `reason`: the handler's signal aborts and the caller gets the reason. */
  stop(reason: unknown): void {
    if (!this.#settle()) return;
    this.#stopped = { reason };
    this.#controller?.abort(reason);
    this.#reject(reason);
  }

  #settle(): boolean {
    if (this.#done) return false;
    this.#done = true;
    this.queue.delete(this);
    if (this.#onCallerAbort) this.parent.signal.removeEventListener("abort", this.#onCallerAbort);
    return true;
  }
}

/**
 * The calls running under one cap, oldest first. They all run for the same `capMs`, so the order
 * they started in is the order they expire in: one timer, armed for the oldest, serves them all,
 * where a timer per call cost every call a Timeout to create and clear.
 */
class CapQueue {
  readonly #running = new Set<CappedCall>();
  #timer: NodeJS.Timeout | undefined;
  readonly #expire = (): void => {
    this.#timer = undefined;
    const now = performance.now();
    let oldest: CappedCall | undefined;
    for (const call of this.#running) {
      if (call.expiresAt > now) {
        oldest = call;
        break;
      }
      call.stop(deadlineExceeded(`deadline of ${this.capMs} ms exceeded`));
    }
    // A call started by an abort listener above may have armed a timer for the whole cap already.
    clearTimeout(this.#timer);
    this.#timer = oldest && setTimeout(this.#expire, oldest.expiresAt - now);
  };

  constructor(readonly capMs: number) {}

  add(call: CappedCall): void {
    this.#running.add(call);
    this.#timer ??= setTimeout(this.#expire, this.capMs);
  }

  /** Takes a settled call out; the timer goes with the last one, so an idle cap holds no timer. */
  delete(call: CappedCall): void {
    this.#running.delete(call);
    if (this.#running.size === 0 && this.#timer) {
      clearTimeout(this.#timer);
      this.#timer = undefined;
    }
  }
}

function runCapped(next: CallHandler, call: CallRequest, queue: CapQueue): Promise<CallResult> {
  const capped = new CappedCall(call.ctx, queue);
  queue.add(capped);
  try {
    capped.answer(next({ service: call.service, method: call.method, ctx: capped.ctx, input: call.input }));
  } catch (e) {
    // A handler that throws instead of rejecting fails the call all the same.
    capped.answer(Promise.reject(e));
  }
  return capped.settled;
}

/**
 * Deadline cap: a call without a deadline, or with one longer than `maxDeadlineMs`, runs under
 * `maxDeadlineMs` instead; handlers see the capped signal and timeoutMs(). Server streams
 * (watches) are long-lived by design and are capped only by their own deadline.
 */
export function deadlineInterceptor(maxDeadlineMs: number): KernelInterceptor {
  const queue = new CapQueue(maxDeadlineMs);
  return (next) => (call) => {
    if (call.method.methodKind !== "unary" && call.method.methodKind !== "client_streaming") return next(call);
    const timeout = call.ctx.timeoutMs();
    return timeout !== undefined && timeout <= maxDeadlineMs ? next(call) : runCapped(next, call, queue);
  };
}
