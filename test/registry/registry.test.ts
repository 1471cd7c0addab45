import test from "ava";
import { fromBinary } from "@bufbuild/protobuf";
import {
  AgentStatus,
  WatchAgentsResponse_ChangeType as ChangeType,
} from "../../gen/nops/kernel/v1/agent_registry_pb.js";
import { EventEnvelopeSchema } from "../../gen/nops/events/v1/envelope_pb.js";
import { AgentStatusChangedSchema } from "../../gen/nops/events/v1/agent_events_pb.js";
import { createManualClock } from "../../src/common/clock.js";
import { openDatabase, type Db } from "../../src/store/database.js";
import { migrateUp } from "../../src/store/migrator.js";
import { MIGRATIONS } from "../../src/store/migrations/index.js";
import { createOutbox } from "../../src/store/outbox.js";
import { createSqliteOutboxStore } from "../../src/store/outbox-store.js";
import { createAuditLog } from "../../src/audit/audit-log.js";
import { createRegistry, type AgentChange, type AgentFields } from "../../src/registry/registry.js";
import { createSilentLogger } from "../../src/telemetry/logger.js";
import { resolveKernelOptions } from "../../src/kernel/kernel-options.js";

const options = resolveKernelOptions({
  registry: { heartbeatTtlMs: 1000, zombieAfterMs: 3000, reapAfterMs: 10_000 },
}).registry;
const fields: AgentFields = {
  name: "a",
  version: "1",
  endpoint: "127.0.0.1:1",
  capabilities: [{ name: "summarize", version: "1", attributes: {} }],
  labels: {},
};
const actor = { id: "spiffe://nops.local/nops/admin/test", correlationId: "c-1" };

function setup(db: Db = openDatabase({ path: ":memory:" })) {
  migrateUp(db, MIGRATIONS);
  const clock = createManualClock();
  const events = createOutbox(createSqliteOutboxStore(db), { source: "edge-test", clock });
  const audit = createAuditLog(db, clock);
  const registry = createRegistry({ db, events, audit, clock, logger: createSilentLogger() }, options);
  const outboxTypes = () =>
    (db.prepare("SELECT type FROM outbox ORDER BY id").all() as { type: string }[]).map((r) => r.type);
  return { db, clock, registry, audit, outboxTypes };
}

test("registry - status follows heartbeat age: healthy, stale, zombie, then reaped", (t) => {
  const { clock, registry, outboxTypes } = setup();
  const id = registry.register("acme", fields, actor).id;
  const status = () => registry.get("acme", id).status;
  t.is(status(), AgentStatus.HEALTHY);

  clock.advance(1500);
  registry.sweep();
  t.is(status(), AgentStatus.STALE);
  t.is(registry.listRoutable("acme", "summarize").length, 1, "stale agents are still routable");

  clock.advance(2000);
  registry.sweep();
  t.is(status(), AgentStatus.ZOMBIE);
  t.is(registry.listRoutable("acme", "summarize").length, 0, "zombies are never routed to");
  t.is(registry.list({ tenant: "acme", routableOnly: true, limit: 10 }).agents.length, 0);
  t.is(registry.list({ tenant: "acme", limit: 10 }).agents.length, 1, "a plain listing still shows the zombie");

  registry.heartbeat("acme", id, undefined);
  t.is(status(), AgentStatus.HEALTHY, "a heartbeat revives a zombie that has not been reaped");

  clock.advance(10_000);
  registry.sweep();
  t.throws(() => registry.get("acme", id), { message: /not found/ });
  t.deepEqual(outboxTypes(), [
    "agent.registered.v1",
    "agent.status_changed.v1",
    "agent.status_changed.v1",
    "agent.status_changed.v1",
    "agent.deregistered.v1",
  ]);
});

test("registry - status change events carry previous and current status", (t) => {
  const { db, clock, registry } = setup();
  registry.register("acme", fields, actor);
  clock.advance(1500);
  registry.sweep();
  const row = db.prepare("SELECT envelope FROM outbox WHERE type = 'agent.status_changed.v1'").get() as {
    envelope: Buffer;
  };
  const env = fromBinary(EventEnvelopeSchema, row.envelope);
  t.is(env.source, "edge-test");
  const payload = fromBinary(AgentStatusChangedSchema, env.payload);
  t.is(payload.previous, AgentStatus.HEALTHY);
  t.is(payload.current, AgentStatus.STALE);
});

test("registry - heartbeats are batched into one write per flush and survive a reload", (t) => {
  const db = openDatabase({ path: ":memory:" });
  const { clock, registry } = setup(db);
  const id = registry.register("acme", fields, actor).id;
  for (let i = 0; i < 50; i++) {
    clock.advance(10);
    registry.heartbeat("acme", id, {
      inFlight: i,
      cpu: 0.1,
      latencyP50Ms: 1,
      latencyP99Ms: 2,
      errorRate: 0,
      reportedAt: clock.now(),
    });
  }
  const beatsBefore = db.prepare("SELECT count(*) AS n FROM outbox WHERE type = 'agent.heartbeat.v1'").get() as {
    n: number;
  };
  t.is(beatsBefore.n, 0, "nothing written before the flush");
  registry.flush();
  const beats = db.prepare("SELECT count(*) AS n FROM outbox WHERE type = 'agent.heartbeat.v1'").get() as { n: number };
  t.is(beats.n, 1, "50 heartbeats coalesce into one event");
  const reloaded = createRegistry(
    {
      db,
      events: createOutbox(createSqliteOutboxStore(db), { source: "e", clock }),
      audit: createAuditLog(db, clock),
      clock,
      logger: createSilentLogger(),
    },
    options,
  );
  const agent = reloaded.get("acme", id);
  t.is(agent.load?.inFlight, 49);
  t.is(Number(agent.heartbeatAt?.seconds) * 1000 + (agent.heartbeatAt?.nanos ?? 0) / 1e6, clock.now());
});

test("registry - every write records an outbox event and an audit row in its transaction", (t) => {
  const { db, registry, audit } = setup();
  const id = registry.register("acme", fields, actor).id;
  registry.update("acme", id, { ...fields, version: "2" }, ["version"], actor);
  registry.deregister("acme", id, "done", actor);
  const actions = db.prepare("SELECT action, actor FROM audit_log ORDER BY seq").all() as {
    action: string;
    actor: string;
  }[];
  t.deepEqual(
    actions.map((a) => a.action),
    ["agent.register", "agent.update", "agent.deregister"],
  );
  t.true(actions.every((a) => a.actor === actor.id));
  t.true(audit.verify().ok);
});

test("registry - a failed write leaves no agent, no event and no audit row", (t) => {
  const { db, registry } = setup();
  db.exec("CREATE TRIGGER fail_audit BEFORE INSERT ON audit_log BEGIN SELECT RAISE(ABORT, 'audit unavailable'); END;");
  t.throws(() => registry.register("acme", fields, actor), { any: true, message: /audit unavailable/ });
  t.is((db.prepare("SELECT count(*) AS n FROM agents").get() as { n: number }).n, 0);
  t.is((db.prepare("SELECT count(*) AS n FROM outbox").get() as { n: number }).n, 0);
  t.is(registry.list({ tenant: "acme", limit: 10 }).agents.length, 0);
});

test("registry - once started, the clock's timers flush heartbeats and sweep; close stops them", (t) => {
  const { clock, registry, outboxTypes } = setup();
  const id = registry.register("acme", fields, actor).id;
  registry.start();
  registry.heartbeat("acme", id, undefined);
  const beats = () => outboxTypes().filter((x) => x === "agent.heartbeat.v1").length;
  clock.advance(options.heartbeatFlushMs - 1);
  t.is(beats(), 0, "not before the flush interval");
  clock.advance(1);
  t.is(beats(), 1, "flushed by the timer");
  // No heartbeat since t=0: the sweep timer (every 1 s) marks the agent stale past its 1 s TTL,
  // then a zombie at 3 s.
  t.is(options.sweepIntervalMs, 1000);
  clock.advance(1000);
  t.is(registry.get("acme", id).status, AgentStatus.STALE);
  clock.advance(1000);
  t.is(registry.get("acme", id).status, AgentStatus.ZOMBIE);
  registry.close();
  t.is(clock.pendingTimers(), 0);
});

test("registry - a watch with a sync interval sends SYNCED and one coalesced HEARTBEAT per beaten agent per tick", async (t) => {
  const { clock, registry } = setup();
  const a = registry.register("acme", fields, actor).id;
  const b = registry.register("acme", { ...fields, name: "b" }, actor).id;
  registry.register("globex", fields, actor);
  const abort = new AbortController();
  const changes = registry.watch("acme", "", abort.signal, { syncIntervalMs: 500 })[Symbol.asyncIterator]();
  const next = async () => (await changes.next()) as IteratorResult<AgentChange, undefined>;
  // Everything the watch has queued so far (it never blocks on an empty queue here: each read is preceded
  // by a tick that ends with SYNCED).
  const untilSynced = async () => {
    const out: { type: ChangeType; id?: string; inFlight?: number }[] = [];
    for (;;) {
      const { value } = await next();
      if (!value) throw new Error("watch ended");
      if (value.type === ChangeType.SYNCED) return out;
      out.push({ type: value.type, id: value.agent?.id, inFlight: value.agent?.load?.inFlight });
    }
  };
  t.deepEqual((await untilSynced()).map((c) => c.type).sort(), [ChangeType.EXISTING, ChangeType.EXISTING]);

  const load = (inFlight: number) => ({
    inFlight,
    cpu: 0,
    latencyP50Ms: 0,
    latencyP99Ms: 0,
    errorRate: 0,
    reportedAt: clock.now(),
  });
  registry.heartbeat("acme", a, load(1));
  registry.heartbeat("acme", a, load(2));
  registry.heartbeat("acme", a, load(3));
  clock.advance(500);
  t.deepEqual(
    await untilSynced(),
    [{ type: ChangeType.HEARTBEAT, id: a, inFlight: 3 }],
    "three beats, latest state once",
  );

  clock.advance(500);
  t.deepEqual(await untilSynced(), [], "nothing beat: SYNCED alone");

  registry.heartbeat("acme", b, undefined);
  registry.deregister("acme", a, "gone", actor);
  clock.advance(500);
  t.deepEqual(await untilSynced(), [
    { type: ChangeType.DEREGISTERED, id: a, inFlight: 3 },
    { type: ChangeType.HEARTBEAT, id: b, inFlight: undefined },
  ]);
  abort.abort();
  t.true((await next()).done);
  t.is(clock.pendingTimers(), 0, "the sync timer ends with the watch");
});

test("registry - a watch without a sync interval streams no heartbeats and no SYNCED", async (t) => {
  const { clock, registry } = setup();
  const a = registry.register("acme", fields, actor).id;
  const abort = new AbortController();
  const changes = registry.watch("acme", "", abort.signal)[Symbol.asyncIterator]();
  const next = async () => (await changes.next()) as IteratorResult<AgentChange, undefined>;
  t.is((await next()).value?.type, ChangeType.EXISTING);
  registry.heartbeat("acme", a, undefined);
  clock.advance(5000);
  registry.deregister("acme", a, "gone", actor);
  t.is((await next()).value?.type, ChangeType.DEREGISTERED, "the heartbeat was not streamed");
  abort.abort();
});
