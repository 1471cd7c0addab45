// The Publish writer thread (publish-writer.ts): its own SQLite connection to the kernel database, on which it
// commits each batch of Publish calls, so the commit's fsync never runs on the kernel's event loop.
import { parentPort, receiveMessageOnPort, workerData } from "node:worker_threads";
import {
  createSqliteOutboxStore,
  createSqliteTransactor,
  openDatabase,
  type PublicationReceipt,
} from "../store/index.js";
import { createIdempotencyStore } from "./idempotency-store.js";
import { writePublishBatch, type PublishWrite, type PublishWriteResult } from "./publish-batch.js";

/** What the thread is started with. */
export interface WriterThreadData {
  databasePath: string;
  idempotencyTtlMs: number;
}

/**
 * A batch to commit (with the kernel clock's time, for idempotency expiry) and PubAck receipts to record, or the
 * order to close.
 */
export type WriterRequest =
  | { id: number; now: number; batch: PublishWrite[]; receipts: ReceiptBatch[] }
  | { close: true };

/** PubAcks of the leaf stream, recorded at `now` (OutboxStore.recordPublished). */
export interface ReceiptBatch {
  receipts: PublicationReceipt[];
  now: number;
}

/**
 * The batch's results in order with when its transaction ran (ms since the epoch), or why its commit failed
 * (then nothing of it is stored).
 */
export type WriterReply = (
  | { id: number; results: PublishWriteResult[]; startMs: number; endMs: number }
  | { id: number; error: string }
) & {
  /** Why recording the receipts failed (they are re-derivable: republished rows are dropped as duplicates). */
  receiptsError?: string;
};

if (!parentPort) throw new Error("publish-writer-thread runs as a worker thread");
const port = parentPort;
const data = workerData as WriterThreadData;
const db = openDatabase({ path: data.databasePath });
let now = 0;
const stores = {
  outbox: createSqliteOutboxStore(db),
  idempotency: createIdempotencyStore({ db, clock: { now: () => now } }, { ttlMs: data.idempotencyTtlMs }),
  transactor: createSqliteTransactor(db),
};

const epochMs = (): number => performance.timeOrigin + performance.now();

// Group commit: the batches that arrived while the last commit ran are committed together, in one transaction.
port.on("message", (first: WriterRequest) => {
  const requests = [first];
  for (let next = receiveMessageOnPort(port); next; next = receiveMessageOnPort(port))
    requests.push(next.message as WriterRequest);
  const batches = requests.filter((r): r is Exclude<WriterRequest, { close: true }> => !("close" in r));
  if (batches.length > 0) commit(batches);
  if (batches.length < requests.length) {
    db.close();
    port.close();
  }
});

function commit(batches: Exclude<WriterRequest, { close: true }>[]): void {
  now = batches.at(-1)?.now ?? now;
  let receiptsError: string | undefined;
  try {
    for (const b of batches) for (const r of b.receipts) stores.outbox.recordPublished(r.receipts, r.now);
  } catch (err) {
    receiptsError = err instanceof Error ? err.message : String(err);
  }
  const startMs = epochMs();
  let results: PublishWriteResult[] | undefined;
  let error: string | undefined;
  try {
    results = writePublishBatch(
      stores,
      batches.flatMap((b) => b.batch),
    );
  } catch (err) {
    error = err instanceof Error ? err.message : String(err);
  }
  const endMs = epochMs();
  let offset = 0;
  for (const b of batches) {
    const reply: WriterReply =
      results === undefined
        ? { id: b.id, error: error ?? "commit failed" }
        : { id: b.id, results: results.slice(offset, offset + b.batch.length), startMs, endMs };
    offset += b.batch.length;
    port.postMessage(receiptsError === undefined ? reply : { ...reply, receiptsError });
  }
}
