// Runs in a worker thread of the classification pool (classify-pool.ts): the rules are CPU-bound and some
// inputs make them slow, so they never run on the server's event loop.
import { parentPort } from "node:worker_threads";
import { detectPii } from "./pii-classifier.js";
import type { Detection } from "./pii-kinds.js";

/** One classification: the pool's id for it and the text. */
export interface ClassifyTask {
  id: number;
  text: string;
}

/** Posted to the pool when a task starts running, so its time budget counts running time only. */
export interface ClassifyStarted {
  classifyStarted: number;
}

/** Piscina calls the default export with each task. */
export default function classifyInWorker(task: ClassifyTask): Detection[] {
  parentPort?.postMessage({ classifyStarted: task.id } satisfies ClassifyStarted);
  return detectPii(task.text);
}
