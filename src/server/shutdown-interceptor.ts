import type { ConnectError } from "@connectrpc/connect";
import { unavailable } from "../common/index.js";
import {
  endStreamOnAbort,
  type CallHandler,
  type CallRequest,
  type CallResult,
  type KernelInterceptor,
} from "./interceptor.js";

/** How long a client should wait before it reconnects after a shutdown, in seconds. */
export const SHUTDOWN_RETRY_AFTER_S = 1;

function shuttingDown(): ConnectError {
  return unavailable(
    "the kernel is shutting down; reconnect (to another instance, or this one after it restarts)",
    SHUTDOWN_RETRY_AFTER_S * 1000,
  );
}

// How long shutdown waits for ended streams to hand their status to the transports.
const ENDING_WAIT_MS = 1000;

/** Ends open server streams when shutdown starts. */
export interface StreamShutdown {
  /** The chain link that tracks open streams and ends them. */
  readonly interceptor: KernelInterceptor;
  /**
   * Ends every open stream with UNAVAILABLE and a retry hint, refuses new ones, and resolves
   * once each stream's handler has finished and its status has been handed to the transport.
   */
  endStreams(): Promise<void>;
}

/**
 * Open streams (WatchAgents, Subscribe, …) end with a clean status as soon as shutdown starts,
 * instead of holding the grace period and then being cut without one.
 */
export function createStreamShutdown(): StreamShutdown {
  const stop = new AbortController();
  const open = new Set<Promise<void>>();

  async function* endOnShutdown(source: AsyncIterable<unknown>): AsyncIterable<unknown> {
    let done!: () => void;
    const finished = new Promise<void>((r) => (done = r));
    open.add(finished);
    try {
      yield* endStreamOnAbort(source, stop.signal);
    } finally {
      open.delete(finished);
      done();
    }
  }

  async function streamCall(next: CallHandler, call: CallRequest): Promise<CallResult> {
    if (stop.signal.aborted) throw shuttingDown();
    const result = await next(call);
    return result.kind === "stream" ? { kind: "stream", output: endOnShutdown(result.output) } : result;
  }

  return {
    // A unary call is no stream: it passes untouched (the transports drain it in their grace period).
    interceptor: (next) => (call) => (call.method.methodKind === "unary" ? next(call) : streamCall(next, call)),
    async endStreams() {
      stop.abort(shuttingDown());
      // A stream whose consumer stopped pulling stays suspended at its yield and never finishes:
      // wait for the others, not for it.
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([
        Promise.all(open),
        new Promise((r) => {
          timer = setTimeout(r, ENDING_WAIT_MS);
        }),
      ]);
      clearTimeout(timer);
      // The transports write the error status in the turn after the stream's iterator throws.
      await new Promise((r) => setImmediate(r));
    },
  };
}
