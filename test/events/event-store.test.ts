import test from "ava";
import { createManualClock } from "../../src/common/clock.js";
import { ConfigError } from "../../src/common/errors.js";
import { createIdempotencyStore } from "../../src/events/idempotency-store.js";
import { createInbox } from "../../src/events/inbox.js";
import { parseSourcedSequence } from "../../src/events/hub-confirmer.js";
import { resolveEventBusOptions } from "../../src/events/event-bus-options.js";
import { resolveEventBusServiceOptions, durableName } from "../../src/events/event-bus-service.js";
import { renderLeafConfig } from "../../src/events/nats-config.js";
import { openDatabase } from "../../src/store/database.js";
import { migrateDown, migrateUp } from "../../src/store/migrator.js";
import { MIGRATIONS } from "../../src/store/migrations/index.js";
import { migration0004 } from "../../src/store/migrations/0004-events.js";
import { openEventsDb } from "./edge-pipeline.js";

const memDb = () => openEventsDb(":memory:");

test("idempotency store - a key answers until its TTL, then the sweeper removes it", (t) => {
  const clock = createManualClock();
  const db = memDb();
  const store = createIdempotencyStore({ db, clock }, { ttlMs: 60_000 });
  store.put("acme", "k1", { requestHash: "h", outboxId: 7, eventId: "e7", subject: "s" });
  t.is(store.get("acme", "k1")?.outboxId, 7);
  t.is(store.get("globex", "k1"), undefined);
  clock.advance(59_999);
  t.is(store.sweep(), 0);
  t.truthy(store.get("acme", "k1"));
  clock.advance(1);
  t.is(store.get("acme", "k1"), undefined, "expired keys no longer answer even before the sweep");
  t.is(store.sweep(), 1);
  // An expired key may be used again.
  store.put("acme", "k1", { requestHash: "h2", outboxId: 8, eventId: "e8", subject: "s" });
  t.is(store.get("acme", "k1")?.outboxId, 8);
});

test("inbox - applies an event once per consumer and sweeps old rows", (t) => {
  const clock = createManualClock();
  const db = memDb();
  db.exec("CREATE TABLE applied (n INTEGER)");
  const inbox = createInbox({ db, clock }, { retentionMs: 1000 });
  const apply = () => db.prepare("INSERT INTO applied VALUES (1)").run();
  t.true(inbox.applyOnce("projector", "e1", apply));
  t.false(inbox.applyOnce("projector", "e1", apply));
  t.true(inbox.applyOnce("other", "e1", apply));
  t.throws(() =>
    inbox.applyOnce("projector", "e2", () => {
      throw new Error("boom");
    }),
  );
  // A failed apply rolls the inbox row back, so the redelivery applies it.
  t.true(inbox.applyOnce("projector", "e2", apply));
  t.is((db.prepare("SELECT count(*) AS n FROM applied").get() as { n: number }).n, 3);
  clock.advance(1001);
  t.is(inbox.sweep(), 3);
});

test("migration 0004 - down then up keeps the outbox rows", (t) => {
  const db = openDatabase({ path: ":memory:" });
  migrateUp(db, MIGRATIONS);
  t.is(MIGRATIONS[3], migration0004);
  db.prepare(
    "INSERT INTO outbox (event_id, type, tenant, subject, envelope, created_at) VALUES ('e', 't', 'a', 's', x'00', 1)",
  ).run();
  // Down to just before 0004, whatever came after it.
  migrateDown(db, MIGRATIONS, MIGRATIONS.length - 3);
  t.falsy(db.prepare("SELECT 1 FROM sqlite_master WHERE name = 'event_inbox'").get());
  migrateUp(db, MIGRATIONS);
  t.is((db.prepare("SELECT count(*) AS n FROM outbox").get() as { n: number }).n, 1);
  t.truthy(db.prepare("SELECT 1 FROM sqlite_master WHERE name = 'event_inbox'").get());
});

test("hub confirmer - parses the Nats-Stream-Source header of the hub's last message", (t) => {
  t.is(parseSourcedSequence("NOPS_EVENTS:JE7QNXai 10", "NOPS_EVENTS"), 10);
  t.is(parseSourcedSequence("NOPS_EVENTS 42", "NOPS_EVENTS"), 42);
  t.is(parseSourcedSequence("OTHER:abc 10", "NOPS_EVENTS"), undefined);
  t.is(parseSourcedSequence("NOPS_EVENTS:x notanumber", "NOPS_EVENTS"), undefined);
  t.is(parseSourcedSequence(undefined, "NOPS_EVENTS"), undefined);
});

test("event bus options - defaults, and errors that name the field", (t) => {
  const o = resolveEventBusOptions({ edgeId: "edge-eu-1" });
  t.is(o.edgeDomain, "edge-eu-1");
  t.is(o.hubStreamName, "NOPS_EDGE_EDGE_EU_1");
  t.is(o.maxInFlight, 256);
  t.throws(() => resolveEventBusOptions({}), { instanceOf: ConfigError, message: /events\.edgeId/ });
  t.throws(() => resolveEventBusOptions({ edgeId: "e", maxInFlight: 0 }, "kernel.events"), {
    instanceOf: ConfigError,
    message: /kernel\.events\.maxInFlight must be an integer >= 1/,
  });
  t.throws(() => resolveEventBusOptions({ edgeId: "e", systemTenant: "Bad" }), { message: /systemTenant/ });
  t.throws(() => resolveEventBusOptions({ edgeId: "e", retryInitialMs: 10, retryMaxMs: 5 }), { message: /retryMaxMs/ });
  t.throws(() => resolveEventBusServiceOptions({ maxHeaders: -1 }), { message: /events\.service\.maxHeaders/ });
});

test("event bus - durable names of different tenants' consumers never collide", (t) => {
  t.not(durableName("a--b", "c"), durableName("a", "b__c"));
  t.is(durableName("acme", "billing"), "acme--billing");
});

test("nats config - refuses values that would break out of a quoted string", (t) => {
  const base = { serverName: "leaf", port: 4222, domain: "edge1", storeDir: "/tmp/js", user: "kernel", password: "pw" };
  t.regex(renderLeafConfig(base), /domain: "edge1"/);
  t.throws(() => renderLeafConfig({ ...base, password: 'x" }' }), { instanceOf: ConfigError, message: /password/ });
});
