import { availableParallelism } from "node:os";
import { Piscina } from "piscina";
import type { Logger } from "pino";
import { canceled, resourceExhausted, unavailable } from "../../../src/common/index.js";
import type { Detection } from "./pii-kinds.js";
import type { ClassifyStarted, ClassifyTask } from "./classify-worker.js";

/** Runs the classifier off the event loop, one request per worker thread, each within a time budget. */
export interface ClassifyPool {
  /**
   * Detections in `text`. Rejects with RESOURCE_EXHAUSTED when the request runs past the budget (its worker is
   * terminated and replaced) or the queue is full, and with CANCELLED when `signal` (the caller's deadline or
   * cancellation) aborts first. A request the caller gives up on while it waits leaves the queue; one already
   * running finishes on its thread (bounded by the budget) and its answer is dropped: terminating the thread
   * would cost a new one's boot, and a burst of deadlines would otherwise replace every thread at once.
   */
  detect(text: string, signal?: AbortSignal): Promise<Detection[]>;
  /**
   * Resolves once the warm workers have loaded the classifier and answered one request each (a worker booting
   * takes a while, and under load longer than a caller's deadline), so the server listens only when warm.
   */
  warm(): Promise<void>;
  /** Requests waiting for a thread or running on one (including those whose caller has gone). */
  inFlight(): number;
  /** Worker threads running now (the warm ones, replaced when terminated; up to `threads` while busy). */
  threadCount(): number;
  /** Worker threads started since the pool was created: warm ones, ones started for a burst, replacements. */
  threadStarts(): number;
  /** Stops every worker; requests in flight fail with UNAVAILABLE. */
  close(): Promise<void>;
}

/** Options of the classification pool. */
export interface ClassifyPoolOptions {
  /** Most worker threads, each classifying one request at a time. */
  threads: number;
  /** Threads that run even while idle (at least 1, at most `threads`); the others start while requests wait. */
  warmThreads: number;
  /** How long a thread beyond the warm ones may sit idle before it exits, ms (each thread holds its own V8 heap). */
  idleThreadMs: number;
  /** Longest a request may run in a worker, ms; past it the worker is terminated, the answer RESOURCE_EXHAUSTED. */
  budgetMs: number;
  /** Requests waiting for a thread at most; more are refused with RESOURCE_EXHAUSTED. */
  maxQueue: number;
}

/** Default thread count: one per core the process may use. */
export const DEFAULT_CLASSIFY_THREADS = availableParallelism();
/** Default budget, below the kernel guard's 5 s DGE deadline so the guard hears a refusal, not silence. */
export const DEFAULT_CLASSIFY_BUDGET_MS = 3000;
/** Default queue bound. */
export const DEFAULT_CLASSIFY_MAX_QUEUE = 1024;
/** Default idle time of a thread beyond the first: a burst keeps its threads, an idle DGE gives their memory back. */
export const DEFAULT_CLASSIFY_IDLE_THREAD_MS = 30_000;
/**
 * V8 young generation of a classification thread, MiB. V8 sizes it from the machine's memory (tens of MiB per
 * thread); a classification's garbage is short-lived and small, so a small one costs a few more scavenges only.
 */
const WORKER_YOUNG_GENERATION_MB = 8;

// Under tsx (tests, bench) this module is a .ts file and so is its worker; compiled, both are .js. A worker
// inherits the process's execArgv, so tsx's loader is present in it when it is in the parent.
const WORKER_FILE = new URL(
  import.meta.url.endsWith(".ts") ? "./classify-worker.ts" : "./classify-worker.js",
  import.meta.url,
).href;

/**
 * Starts the pool. Piscina (the Node.js project's worker pool) is used rather than hand-written worker
 * bookkeeping: aborting a running task terminates its worker and the pool starts a replacement, which is
 * exactly the fail-closed budget this needs. Admission is the pool's own: a request is handed to piscina only
 * when a thread is free for it, so the only abort piscina ever sees is the budget's, and a caller who gives up
 * while waiting just leaves this queue.
 */
export function createClassifyPool(deps: { logger: Logger }, options: ClassifyPoolOptions): ClassifyPool {
  const pool = new Piscina({
    filename: WORKER_FILE,
    // warmThreads are kept running (a thread booting under load takes longer than a caller's deadline); the
    // others start when requests wait and exit after idleThreadMs.
    minThreads: Math.min(options.warmThreads, options.threads),
    maxThreads: options.threads,
    idleTimeout: options.idleThreadMs,
    resourceLimits: { maxYoungGenerationSizeMb: WORKER_YOUNG_GENERATION_MB },
    // One request per worker: terminating a worker for its budget takes no other request down with it.
    concurrentTasksPerWorker: 1,
  });
  pool.on("error", (err: unknown) => deps.logger.error({ err }, "classification worker failed"));
  let threadStarts = 0;
  pool.on("workerCreate", () => threadStarts++);
  let closing = false;
  let nextId = 0;
  // Requests on a thread (at most `threads`), and those waiting for one, oldest first.
  let running = 0;
  const waiting = new Map<() => void, (err: Error) => void>();
  // The budget of a task starts when its worker says it started (a worker booting is not the task's running
  // time); the worker posts on its parentPort, which piscina re-emits as "message".
  const onStart = new Map<number, () => void>();
  pool.on("message", (m: unknown) => {
    if (typeof m === "object" && m !== null && "classifyStarted" in m)
      onStart.get((m as ClassifyStarted).classifyStarted)?.();
  });

  /** Resolves when a thread is free for this request (counted as running); rejects if the caller leaves first. */
  function admit(signal: AbortSignal | undefined): Promise<void> {
    if (signal?.aborted) return Promise.reject(canceled("classification cancelled by the caller"));
    if (running < options.threads && waiting.size === 0) {
      running++;
      return Promise.resolve();
    }
    if (waiting.size >= options.maxQueue) {
      return Promise.reject(
        resourceExhausted(
          `classification queue full: ${options.maxQueue} requests waiting (dge.server.classifyMaxQueue)`,
        ),
      );
    }
    return new Promise((resolve, reject) => {
      const leave = (): void => {
        waiting.delete(grant);
        reject(canceled("classification cancelled by the caller while it waited for a thread"));
      };
      const grant = (): void => {
        signal?.removeEventListener("abort", leave);
        running++;
        resolve();
      };
      waiting.set(grant, (err) => {
        signal?.removeEventListener("abort", leave);
        reject(err);
      });
      signal?.addEventListener("abort", leave, { once: true });
    });
  }

  function release(): void {
    running--;
    const next = waiting.keys().next();
    if (next.done) return;
    waiting.delete(next.value);
    next.value();
  }

  /** Runs one admitted task on a thread under the budget; settles when the thread is done with it. */
  async function runTask(text: string): Promise<Detection[]> {
    const id = ++nextId;
    const budget = new AbortController();
    let timer: NodeJS.Timeout | undefined;
    onStart.set(id, () => {
      timer = setTimeout(() => budget.abort(), options.budgetMs);
    });
    try {
      return (await pool.run({ id, text } satisfies ClassifyTask, { signal: budget.signal })) as Detection[];
    } catch (err) {
      if (budget.signal.aborted) {
        deps.logger.warn({ chars: text.length, budgetMs: options.budgetMs }, "classification over budget, stopped");
        throw resourceExhausted(
          `classification ran past its time budget of ${options.budgetMs} ms (dge.server.classifyBudgetMs); ` +
            "the request was stopped",
        );
      }
      if (closing) throw unavailable("the reference DGE is shutting down");
      throw err;
    } finally {
      clearTimeout(timer);
      onStart.delete(id);
      release();
    }
  }

  return {
    async detect(text, signal) {
      if (closing) throw unavailable("the reference DGE is shutting down");
      await admit(signal);
      const task = runTask(text);
      if (!signal) return task;
      // The caller may leave now; the task keeps its thread until it ends (or its budget does).
      task.catch(() => undefined);
      return new Promise<Detection[]>((resolve, reject) => {
        const leave = (): void => reject(canceled("classification cancelled by the caller"));
        signal.addEventListener("abort", leave, { once: true });
        void task.then(resolve, reject).finally(() => signal.removeEventListener("abort", leave));
        if (signal.aborted) leave();
      });
    },
    async warm() {
      // One task per warm thread at once: each takes one (one task per worker), loading the rules first.
      const sample = "warm-up: anna@example.com, +1 415 555 2671, 4111 1111 1111 1111";
      const warm = Math.min(options.warmThreads, options.threads);
      await Promise.all(Array.from({ length: warm }, () => pool.run({ id: 0, text: sample })));
    },
    inFlight: () => running + waiting.size,
    threadCount: () => pool.threads.length,
    threadStarts: () => threadStarts,
    close() {
      closing = true;
      for (const fail of waiting.values()) fail(unavailable("the reference DGE is shutting down"));
      waiting.clear();
      return pool.destroy();
    },
  };
}
