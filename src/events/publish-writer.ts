import { Worker } from "node:worker_threads";
import type { Clock } from "../common/index.js";
import type { Logger } from "../telemetry/index.js";
import {
  writePublishBatch,
  type PublishBatchStores,
  type PublishWrite,
  type PublishWriteResult,
} from "./publish-batch.js";
import type { PublicationReceipt } from "../store/index.js";
import type { ReceiptBatch, WriterReply, WriterRequest, WriterThreadData } from "./publish-writer-thread.js";

/**
 * Stores Publish calls with group commit: calls that arrive while a commit is running share the next one.
 * `write` resolves once the call's row is durable (its transaction committed with synchronous=FULL), and
 * rejects when that commit failed, so nothing acknowledged can be lost.
 */
export interface PublishWriter {
  /**
   * `onCommit`, when the writer commits on another thread (where the kernel's tracing does not see it), hears
   * when the call's transaction ran, so the caller's trace can show it.
   */
  write(w: PublishWrite, onCommit?: (commit: CommitTiming) => void): Promise<PublishWriteResult>;
  /** Waits for the commits in flight, then stops (writes after close are refused). */
  close(): Promise<void>;
}

/** When a batch's transaction ran (ms since the epoch) and how many calls it held. */
export interface CommitTiming {
  startMs: number;
  endMs: number;
  batchSize: number;
}

interface Pending {
  write: PublishWrite;
  onCommit?: (commit: CommitTiming) => void;
  resolve: (r: PublishWriteResult) => void;
  reject: (e: unknown) => void;
}

/**
 * The Publish writer on the caller's own connection and thread: the calls of one event-loop turn share a
 * transaction. For in-memory databases and stores, which another thread cannot open.
 */
export function createInlinePublishWriter(stores: PublishBatchStores): PublishWriter {
  let pending: Pending[] = [];
  let closed = false;
  const flush = (): void => {
    const batch = pending;
    pending = [];
    let results: PublishWriteResult[];
    try {
      results = writePublishBatch(
        stores,
        batch.map((p) => p.write),
      );
    } catch (err) {
      for (const p of batch) p.reject(err);
      return;
    }
    batch.forEach((p, i) => p.resolve(results[i] ?? { kind: "failed", message: "no result" }));
  };
  return {
    write(write) {
      if (closed) return Promise.reject(new Error("the publish writer is closed"));
      return new Promise((resolve, reject) => {
        pending.push({ write, resolve, reject });
        if (pending.length === 1) setImmediate(flush);
      });
    },
    async close() {
      closed = true;
      if (pending.length > 0) await new Promise<void>((resolve) => setImmediate(resolve));
    },
  };
}

/** Options of the writer thread. */
export interface ThreadPublishWriterOptions {
  /** The kernel database file (the thread opens its own connection to it; ":memory:" cannot be shared). */
  databasePath: string;
  /** Expiry of Publish idempotency keys, ms. */
  idempotencyTtlMs: number;
  /** How long the thread may sit idle before it exits (it starts again on the next Publish), ms. */
  idleMs: number;
}

// Under tsx (tests, bench) this module is a .ts file and so is the thread's; compiled, both are .js. A worker
// inherits the process's execArgv, so tsx's loader is present in it when it is in the parent.
const THREAD_FILE = new URL(
  import.meta.url.endsWith(".ts") ? "./publish-writer-thread.ts" : "./publish-writer-thread.js",
  import.meta.url,
);

/**
 * V8 young generation of the writer thread, MiB: its garbage is a batch's rows. A small one keeps the thread's
 * memory small (V8 would size it from the machine's memory).
 */
const THREAD_YOUNG_GENERATION_MB = 4;

/** The writer thread's writer. */
export interface ThreadPublishWriter extends PublishWriter {
  /** Whether the thread is running now (it starts on a write and exits when idle). */
  running(): boolean;
  /**
   * Records the leaf stream's PubAcks on the thread, with the next batch (the relay's `recordPublished`). They
   * are re-derivable: receipts lost with a failed thread or after close mean republishes the duplicate window
   * drops.
   */
  recordPublished: (receipts: readonly PublicationReceipt[], now: number) => void;
}

/**
 * The Publish writer on a worker thread with its own SQLite connection: the commit and its fsync happen off the
 * event loop. The calls of one event-loop turn go to the thread together, and the thread commits everything that
 * arrived while its last commit ran in one transaction (group commit: one fsync).
 * The thread starts on the first write and exits after `idleMs` without one. If it fails, the calls in its
 * batch are rejected (their rows may or may not be stored: a retry with the same idempotency key is answered
 * as a duplicate when they were) and the next write starts a new thread.
 */
export function createThreadPublishWriter(
  deps: { clock: Clock; logger: Logger },
  options: ThreadPublishWriterOptions,
): ThreadPublishWriter {
  const { clock, logger } = deps;
  let worker: Worker | undefined;
  let queue: Pending[] = [];
  let receipts: ReceiptBatch[] = [];
  // Batches sent to the thread and not yet answered, by id.
  const inFlight = new Map<number, Pending[]>();
  let sendScheduled = false;
  let nextId = 0;
  let idleTimer: NodeJS.Timeout | undefined;
  let closed = false;
  let drained: (() => void) | undefined;

  const fail = (batch: readonly Pending[], err: unknown): void => {
    for (const p of batch) p.reject(err);
  };

  const start = (): Worker => {
    const w = new Worker(THREAD_FILE, {
      workerData: {
        databasePath: options.databasePath,
        idempotencyTtlMs: options.idempotencyTtlMs,
      } satisfies WriterThreadData,
      resourceLimits: { maxYoungGenerationSizeMb: THREAD_YOUNG_GENERATION_MB },
      // Its logs would be the kernel's; it has none, and stdio through the main thread costs a pipe each.
      stdout: false,
      stderr: false,
    });
    w.on("message", (reply: WriterReply) => {
      const batch = inFlight.get(reply.id);
      if (w !== worker || !batch) return;
      inFlight.delete(reply.id);
      if (reply.receiptsError !== undefined) logger.warn({ err: reply.receiptsError }, "recording PubAcks failed");
      if ("error" in reply) {
        logger.error({ err: reply.error }, "publish batch commit failed");
        fail(batch, new Error(reply.error));
      } else {
        const commit = { startMs: reply.startMs, endMs: reply.endMs, batchSize: reply.results.length };
        batch.forEach((p, i) => {
          p.onCommit?.(commit);
          p.resolve(reply.results[i] ?? { kind: "failed", message: "no result" });
        });
      }
      settled();
    });
    const lost = (err: Error): void => {
      if (w !== worker) return;
      worker = undefined;
      logger.error({ err }, "publish writer thread failed");
      const batch = [...[...inFlight.values()].flat(), ...queue];
      inFlight.clear();
      queue = [];
      receipts = [];
      fail(batch, err);
      drained?.();
    };
    w.on("error", lost);
    w.on("exit", (code) => lost(new Error(`publish writer thread exited with code ${code}`)));
    return w;
  };

  const stopWhenIdle = (): void => {
    clearTimeout(idleTimer);
    idleTimer = setTimeout(() => {
      const w = worker;
      if (!w || inFlight.size > 0 || queue.length > 0 || receipts.length > 0) return;
      worker = undefined;
      w.postMessage({ close: true } satisfies WriterRequest);
    }, options.idleMs);
    idleTimer.unref();
  };

  // Nothing in flight or waiting: the thread may go idle, and a close may finish.
  function settled(): void {
    if (inFlight.size > 0 || queue.length > 0 || receipts.length > 0) return;
    if (closed) drained?.();
    else stopWhenIdle();
  }

  // The calls and receipts of one event-loop turn go to the thread as one message; the thread commits every
  // message that arrived during its last commit together.
  function send(): void {
    sendScheduled = false;
    if (queue.length === 0 && receipts.length === 0) return settled();
    clearTimeout(idleTimer);
    const batch = queue;
    const acks = receipts;
    queue = [];
    receipts = [];
    const id = ++nextId;
    inFlight.set(id, batch);
    worker ??= start();
    worker.postMessage({
      id,
      now: clock.now(),
      batch: batch.map((p) => p.write),
      receipts: acks,
    } satisfies WriterRequest);
  }

  function schedule(): void {
    if (sendScheduled) return;
    sendScheduled = true;
    setImmediate(send);
  }

  return {
    running: () => worker !== undefined,
    recordPublished(acks, now) {
      if (closed) return;
      receipts.push({ receipts: [...acks], now });
      schedule();
    },
    write(write, onCommit) {
      if (closed) return Promise.reject(new Error("the publish writer is closed"));
      return new Promise((resolve, reject) => {
        queue.push({ write, onCommit, resolve, reject });
        schedule();
      });
    },
    async close() {
      closed = true;
      clearTimeout(idleTimer);
      if (inFlight.size > 0 || queue.length > 0 || receipts.length > 0)
        await new Promise<void>((resolve) => (drained = resolve));
      const w = worker;
      worker = undefined;
      if (!w) return;
      const exited = new Promise<void>((resolve) => w.once("exit", () => resolve()));
      w.postMessage({ close: true } satisfies WriterRequest);
      await exited;
    },
  };
}
