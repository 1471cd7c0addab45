// The Publish writer thread (issue 18 item 5): Publish commits on a worker thread with its own SQLite
// connection, acknowledged only once the row is durable; nothing acknowledged is lost across kill -9.
import { spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import { createInterface } from "node:readline";
import test from "ava";
import { systemClock } from "../../src/common/clock.js";
import { Origin } from "../../gen/nops/events/v1/envelope_pb.js";
import { createThreadPublishWriter, type ThreadPublishWriter } from "../../src/events/publish-writer.js";
import type { PublishWrite } from "../../src/events/publish-batch.js";
import { createSilentLogger } from "../../src/telemetry/logger.js";
import { resolveEventBusServiceOptions } from "../../src/events/event-bus-service.js";
import { waitFor } from "../helpers/processes.js";
import { openEventsDb, tempDbPath } from "./edge-pipeline.js";

function write(seq: number, key = "", hash = `h-${seq}`): PublishWrite {
  return {
    idempotencyKey: key,
    requestHash: hash,
    entry: {
      type: "order.created.v1",
      tenant: "acme",
      source: "edge1",
      occurredAt: 1_000 + seq,
      payloadType: "",
      payload: new TextEncoder().encode(String(seq)),
      headers: seq % 2 === 0 ? { "x-seq": String(seq) } : {},
      origin: Origin.CALLER,
    },
  };
}

function start(dbPath: string, idleMs = 60_000): ThreadPublishWriter {
  return createThreadPublishWriter(
    { clock: systemClock, logger: createSilentLogger() },
    { databasePath: dbPath, idempotencyTtlMs: 60_000, idleMs },
  );
}

test("publish writer thread - rows are in the database when acknowledged; keys answer duplicates and conflicts", async (t) => {
  const dbPath = tempDbPath();
  const db = openEventsDb(dbPath);
  t.teardown(() => db.close());
  const writer = start(dbPath);
  t.teardown(() => writer.close());
  // Concurrent writes share commits; each is answered in order with its own row.
  const results = await Promise.all(Array.from({ length: 200 }, (_, i) => writer.write(write(i, `k-${i}`))));
  const ids = results.map((r) => (r.kind === "appended" ? r.event.id : NaN));
  t.deepEqual(
    ids,
    [...ids].sort((a, b) => a - b),
  );
  // Another connection sees every acknowledged row, with its headers.
  t.is(db.prepare("SELECT count(*) FROM outbox WHERE type = 'order.created.v1'").pluck().get(), 200);
  t.is(db.prepare("SELECT count(*) FROM outbox_headers").pluck().get(), 100);
  const first = results[0];
  if (first?.kind !== "appended") return t.fail("first write not appended");
  t.deepEqual(await writer.write(write(0, "k-0")), {
    kind: "duplicate",
    prior: { requestHash: "h-0", outboxId: first.event.id, eventId: first.event.eventId, subject: first.event.subject },
  });
  t.deepEqual(await writer.write(write(0, "k-0", "another request")), { kind: "conflict" });
  t.is(db.prepare("SELECT count(*) FROM outbox").pluck().get(), 200);
});

test("publish writer thread - one failed write rolls back alone; a closed writer refuses writes", async (t) => {
  const dbPath = tempDbPath();
  const db = openEventsDb(dbPath);
  t.teardown(() => db.close());
  const writer = start(dbPath);
  // A row SQLite refuses (outbox.type is NOT NULL): that write's savepoint rolls back, its neighbours commit.
  const bad = write(1);
  (bad.entry as { type: unknown }).type = null;
  const [ok, failed, ok2] = await Promise.all([writer.write(write(0)), writer.write(bad), writer.write(write(2))]);
  t.is(ok?.kind, "appended");
  t.is(failed?.kind, "failed");
  t.is(ok2?.kind, "appended");
  t.is(db.prepare("SELECT count(*) FROM outbox").pluck().get(), 2);
  await writer.close();
  await t.throwsAsync(writer.write(write(3)), { message: /closed/ });
});

test("publish writer thread - starts on the first write and exits when idle, then starts again", async (t) => {
  const dbPath = tempDbPath();
  openEventsDb(dbPath).close();
  const writer = start(dbPath, 100);
  t.teardown(() => writer.close());
  t.false(writer.running());
  t.is((await writer.write(write(0))).kind, "appended");
  await waitFor(() => !writer.running(), "the idle thread to exit", 60_000);
  t.is((await writer.write(write(1))).kind, "appended");
  t.true(writer.running());
});

test("publish writer thread - kill -9: every acknowledged write is in the database afterwards", async (t) => {
  const dbPath = tempDbPath();
  openEventsDb(dbPath).close();
  const fixture = fileURLToPath(new URL("./fixtures/publish-writer-child.ts", import.meta.url));
  const acked: string[] = [];
  const child = spawn(process.execPath, ["--import", "tsx", fixture, dbPath, "100000"], {
    stdio: ["ignore", "pipe", "inherit"],
  });
  t.teardown(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
  });
  const exited = new Promise<string | null>((resolve) => child.once("exit", (_code, signal) => resolve(signal)));
  createInterface({ input: child.stdout }).on("line", (line) => {
    const [kind, eventId] = line.split(" ");
    if (kind === "ACK" && eventId) {
      acked.push(eventId);
      // Killed mid-stream, with commits in flight on the writer thread.
      if (acked.length === 3000) child.kill("SIGKILL");
    }
  });
  t.is(await exited, "SIGKILL");
  const db = openEventsDb(dbPath);
  t.teardown(() => db.close());
  const stored = new Set(db.prepare("SELECT event_id FROM outbox").pluck().all() as string[]);
  t.true(acked.length >= 3000);
  t.deepEqual(
    acked.filter((id) => !stored.has(id)),
    [],
  );
});

test("publish writer options - defaults, and errors that name the field", (t) => {
  const d = resolveEventBusServiceOptions({});
  t.false(d.writerThread);
  t.is(d.writerIdleMs, 60_000);
  t.throws(() => resolveEventBusServiceOptions({ writerThread: "yes" as never }), {
    message: /events\.service\.writerThread/,
  });
  t.throws(() => resolveEventBusServiceOptions({ writerIdleMs: 5 }), { message: /events\.service\.writerIdleMs/ });
});
