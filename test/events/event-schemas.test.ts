import test from "ava";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import Database from "better-sqlite3";
import { AgentRegistryService } from "../../gen/nops/kernel/v1/agent_registry_pb.js";
import { EventBusService } from "../../gen/nops/kernel/v1/event_bus_pb.js";
import { EventEnvelopeSchema, Origin, type EventEnvelope } from "../../gen/nops/events/v1/envelope_pb.js";
import { AgentRegisteredSchema, AgentUpdatedSchema } from "../../gen/nops/events/v1/agent_events_pb.js";
import { ConfigError, systemClock } from "../../src/common/index.js";
import { resolveEventBusOptions } from "../../src/events/event-bus-options.js";
import {
  KERNEL_EVENT_SCHEMAS,
  checkEnvelope,
  createInMemoryOutboxStore,
  createOutbox,
  eventTypeVersion,
} from "../../src/store/index.js";
import { startTestKernel } from "../helpers/kernel.js";
import { waitFor } from "../helpers/processes.js";

const SRC = new URL("../../src/", import.meta.url).pathname;

function sourceFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? sourceFiles(join(dir, e.name)) : e.name.endsWith(".ts") ? [join(dir, e.name)] : [],
  );
}

/**
 * Every kernel event producer in src: an object literal handed to an EventSink with `type:` (a literal
 * or an exported constant) and `schema: <Message>Schema`.
 */
function kernelProducers(): { where: string; type: string; schema: string }[] {
  const files = sourceFiles(SRC).map((f) => ({ f, text: readFileSync(f, "utf8") }));
  const constants = new Map<string, string>();
  for (const { text } of files)
    for (const m of text.matchAll(/export const ([A-Z0-9_]+) = "([a-z0-9_.]+)";/g)) constants.set(m[1]!, m[2]!);
  const out: { where: string; type: string; schema: string }[] = [];
  for (const { f, text } of files)
    for (const m of text.matchAll(/\btype: ("[^"]+"|[A-Z0-9_]+),[^{}]*?\bschema: (\w+)Schema,/g)) {
      const raw = m[1]!;
      const type = raw.startsWith('"') ? raw.slice(1, -1) : constants.get(raw);
      out.push({ where: `${f.slice(SRC.length)}: ${raw}`, type: type ?? `<unresolved ${raw}>`, schema: m[2]! });
    }
  return out;
}

test("event schemas - every kernel event producer in src names a registered type with its registered payload schema", (t) => {
  const producers = kernelProducers();
  // The scan finds the producers it is meant to (registry, egress guard, billing, degraded, audit).
  t.true(producers.length >= 16, `found ${producers.length} producers`);
  for (const p of producers) {
    const registered = KERNEL_EVENT_SCHEMAS.get(p.type);
    t.truthy(registered, `${p.where} writes ${p.type}, which has no registered schema`);
    t.is(registered?.schema.typeName, `nops.events.v1.${p.schema}`, `${p.where} writes ${p.type} with ${p.schema}`);
  }
  const produced = new Set(producers.map((p) => p.type));
  for (const type of KERNEL_EVENT_SCHEMAS.keys())
    t.true(produced.has(type), `${type} is registered but nothing writes it`);
});

test("event schemas - every registered type names its version and a message of the events package", (t) => {
  for (const [type, s] of KERNEL_EVENT_SCHEMAS) {
    t.is(s.version, eventTypeVersion(type) ?? -1);
    t.is(s.type, type);
    t.true(s.schema.typeName.startsWith("nops.events.v1."), `${type}: ${s.schema.typeName}`);
  }
  t.is(eventTypeVersion("orders.created.v12"), 12);
  t.is(eventTypeVersion("orders.created"), undefined);
  t.is(eventTypeVersion("orders.created.v0"), undefined);
});

test("event schemas - the outbox refuses a kernel event of an unregistered type or with another type's schema", (t) => {
  const store = createInMemoryOutboxStore();
  const outbox = createOutbox(store, { source: "edge-1", clock: systemClock });
  const payload = create(AgentRegisteredSchema, { agent: { id: "a-1", tenant: "acme" } });
  t.throws(() => outbox.append({ type: "agent.exploded.v1", tenant: "acme", schema: AgentRegisteredSchema, payload }), {
    message: /"agent\.exploded\.v1" is not a registered kernel event type/,
  });
  t.throws(() => outbox.append({ type: "agent.updated.v1", tenant: "acme", schema: AgentRegisteredSchema, payload }), {
    message: /agent\.updated\.v1 carries nops\.events\.v1\.AgentUpdated, not nops\.events\.v1\.AgentRegistered/,
  });
  t.is(store.depth(), 0);
  outbox.append({ type: "agent.registered.v1", tenant: "acme", schema: AgentRegisteredSchema, payload });
  t.is(store.depth(), 1);
});

test("event schemas - events.schemas is validated, naming the entry at fault", (t) => {
  const resolve = (schemas: unknown) =>
    resolveEventBusOptions({ edgeId: "e", schemas } as Parameters<typeof resolveEventBusOptions>[0]).schemas;
  t.deepEqual(resolve(undefined), {});
  t.deepEqual(resolve({ "orders.created.v1": "acme.orders.v1.OrderCreated" }), {
    "orders.created.v1": "acme.orders.v1.OrderCreated",
  });
  t.throws(() => resolve(["orders.created.v1"]), { instanceOf: ConfigError, message: /events\.schemas must be a map/ });
  t.throws(() => resolve({ "orders.created": "x" }), {
    instanceOf: ConfigError,
    message: /events\.schemas\["orders\.created"\]: an event type .* ending in \.v<N>/,
  });
  t.throws(() => resolve({ "agent.created.v1": "x" }), {
    instanceOf: ConfigError,
    message: /namespace "agent" is reserved/,
  });
  t.throws(() => resolve({ "orders.created.v1": "" }), {
    instanceOf: ConfigError,
    message: /events\.schemas\["orders\.created\.v1"\] must be the payload's type name/,
  });
});

function outboxEnvelopes(databasePath: string): EventEnvelope[] {
  const db = new Database(databasePath, { readonly: true });
  try {
    const rows = db.prepare("SELECT envelope FROM outbox ORDER BY id").all() as { envelope: Buffer }[];
    return rows.map((r) => fromBinary(EventEnvelopeSchema, r.envelope));
  } finally {
    db.close();
  }
}

test("event schemas - contract: every event a kernel writes decodes with its registered schema; Publish refuses unregistered tenant types", async (t) => {
  const schemas = { "orders.created.v1": "acme.orders.v1.OrderCreated" };
  const k = await startTestKernel(t, { events: { schemas } });
  const registry = k.client(AgentRegistryService, "in-process");
  const bus = k.client(EventBusService, "in-process");
  const { agent } = await registry.registerAgent({
    tenant: "acme",
    name: "summarizer",
    version: "1",
    endpoint: "grpc://summarizer.acme.svc:7000",
  });
  await registry.heartbeat({ tenant: "acme", id: agent!.id });
  await registry.updateAgent({ agent: { ...agent!, version: "2" }, updateMask: { paths: ["version"] } });
  await registry.deregisterAgent({ tenant: "acme", id: agent!.id, reason: "contract test" });
  const published = await bus.publish({
    tenant: "acme",
    subject: "orders.created.v1",
    payloadType: "acme.orders.v1.OrderCreated",
    payload: new TextEncoder().encode("A-1001"),
  });

  const refused = async (subject: string, payloadType: string, message: RegExp): Promise<void> => {
    const err = await t.throwsAsync(
      bus.publish({ tenant: "acme", subject, payloadType, payload: new Uint8Array([1]) }),
    );
    t.is(ConnectError.from(err).code, Code.InvalidArgument);
    t.regex(ConnectError.from(err).rawMessage, message);
  };
  await refused(
    "orders.deleted.v1",
    "acme.orders.v1.OrderDeleted",
    /subject: event type "orders\.deleted\.v1" is not registered/,
  );
  await refused(
    "orders.created.v1",
    "text/plain",
    /carries payload_type "acme\.orders\.v1\.OrderCreated", not "text\/plain"/,
  );

  const expected = ["agent.registered.v1", "agent.updated.v1", "agent.deregistered.v1", "orders.created.v1"];
  let envelopes: EventEnvelope[] = [];
  await waitFor(
    () => {
      envelopes = outboxEnvelopes(k.kernel.options.databasePath);
      return expected.every((type) => envelopes.some((e) => e.type === type));
    },
    "the run's events in the outbox",
    30_000,
  );
  for (const e of envelopes) {
    t.is(checkEnvelope(e, schemas), undefined, `${e.type} (${e.payloadType})`);
    if (e.origin === Origin.KERNEL) {
      const registered = KERNEL_EVENT_SCHEMAS.get(e.type)!;
      // Decoded without unknown fields and re-encoded, the payload is the same bytes: every field it
      // carries is one of its registered schema's.
      const known = fromBinary(registered.schema, e.payload, { readUnknownFields: false });
      t.true(
        Buffer.from(toBinary(registered.schema, known)).equals(e.payload),
        `${e.type}: a field outside its schema`,
      );
    }
  }
  t.is(envelopes.find((e) => e.id === published.eventId)?.origin, Origin.CALLER);
  t.is(
    fromBinary(AgentUpdatedSchema, envelopes.find((e) => e.type === "agent.updated.v1")!.payload).agent?.version,
    "2",
  );
});
