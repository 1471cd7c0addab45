import test from "ava";
import pino from "pino";
import { fromBinary } from "@bufbuild/protobuf";
import { createManualClock } from "../../src/common/clock.js";
import { openDatabase } from "../../src/store/database.js";
import { migrateUp } from "../../src/store/migrator.js";
import { MIGRATIONS } from "../../src/store/migrations/index.js";
import { createOutbox } from "../../src/store/outbox.js";
import { createSqliteOutboxStore } from "../../src/store/outbox-store.js";
import { createAuditLog } from "../../src/audit/audit-log.js";
import { createCheckpointer } from "../../src/audit/checkpointer.js";
import { encodeVerifierKey, generateSigner, parseVerifierKey } from "../../src/audit/signer.js";
import { openCheckpoint } from "../../src/audit/checkpoint.js";
import { EventEnvelopeSchema } from "../../gen/nops/events/v1/envelope_pb.js";
import { AuditCheckpointIssuedSchema } from "../../gen/nops/events/v1/audit_events_pb.js";
import { checkConsistency } from "./rfc6962-reference.js";
import { waitFor } from "../helpers/processes.js";

const ORIGIN = "nops.kernel/edge-1/audit";

function setup(intervalMs: number) {
  const db = openDatabase({ path: ":memory:" });
  migrateUp(db, MIGRATIONS);
  const clock = createManualClock();
  const audit = createAuditLog(db, clock);
  const events = createOutbox(createSqliteOutboxStore(db), { source: "edge-1", clock });
  const signer = generateSigner(ORIGIN);
  const checkpointer = createCheckpointer(
    { db, audit, signer, events, clock, logger: pino({ level: "silent" }) },
    { origin: ORIGIN, intervalMs, systemTenant: "system" },
  );
  const grow = (n: number) => {
    for (let i = 0; i < n; i++) audit.append({ actor: "a", action: "x", tenant: "t", resource: "r", outcome: "ok" });
  };
  const published = () =>
    (
      db.prepare("SELECT envelope FROM outbox WHERE type = 'audit.checkpoint.issued.v1' ORDER BY id").all() as {
        envelope: Buffer;
      }[]
    ).map((r) => {
      const envelope = fromBinary(EventEnvelopeSchema, r.envelope);
      return { envelope, event: fromBinary(AuditCheckpointIssuedSchema, envelope.payload) };
    });
  return { db, audit, signer, checkpointer, grow, published };
}

test("checkpointer - signs only when the log grew, serialises signings and publishes a proof chain", async (t) => {
  const { audit, signer, checkpointer, grow, published } = setup(0);
  t.teardown(() => checkpointer.stop());
  const empty = await checkpointer.issue();
  t.is(empty.size, 0);
  grow(3);
  // Two requests at once: one checkpoint of size 3, the second sees it and signs nothing new.
  const [a, b] = await Promise.all([checkpointer.issue(), checkpointer.issue()]);
  t.is(a.size, 3);
  t.is(b.note, a.note);
  grow(4);
  const c = await checkpointer.issue();
  t.is(c.size, 7);
  t.is(audit.latestCheckpoint()?.note, c.note);
  const events = published();
  t.deepEqual(
    events.map((e) => [Number(e.event.previousTreeSize), Number(e.event.treeSize)]),
    [
      [0, 0],
      [0, 3],
      [3, 7],
    ],
  );
  const key = parseVerifierKey(encodeVerifierKey(signer.name, signer.publicKey));
  let prev = openCheckpoint(events[0]!.event.checkpoint, [key], ORIGIN);
  for (const { envelope, event } of events.slice(1)) {
    t.is(envelope.tenant, "system");
    t.is(envelope.source, "edge-1");
    const next = openCheckpoint(event.checkpoint, [key], ORIGIN);
    t.true(checkConsistency(prev.size, next.size, prev.root, next.root, event.consistencyProof));
    prev = next;
  }
});

test("checkpointer - the cadence signs a checkpoint once the log grew", async (t) => {
  const { audit, checkpointer, grow } = setup(50);
  t.teardown(() => checkpointer.stop());
  grow(2);
  await waitFor(() => audit.latestCheckpoint()?.size === 2, "a checkpoint of size 2", 60_000);
  t.is(audit.latestCheckpoint()?.origin, ORIGIN);
});
