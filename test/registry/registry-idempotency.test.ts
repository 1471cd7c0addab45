import test from "ava";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Code, ConnectError } from "@connectrpc/connect";
import { AgentRegistryService } from "../../gen/nops/kernel/v1/agent_registry_pb.js";
import { createManualClock } from "../../src/common/clock.js";
import { openDatabase } from "../../src/store/database.js";
import { migrateDown, migrateUp } from "../../src/store/migrator.js";
import { MIGRATIONS } from "../../src/store/migrations/index.js";
import { createOutbox } from "../../src/store/outbox.js";
import { createSqliteOutboxStore } from "../../src/store/outbox-store.js";
import { createAuditLog } from "../../src/audit/audit-log.js";
import { createRegistry, registrationHash, type AgentFields } from "../../src/registry/registry.js";
import { createSilentLogger } from "../../src/telemetry/logger.js";
import { resolveKernelOptions } from "../../src/kernel/kernel-options.js";
import { BOTH, startTestKernel } from "../helpers/kernel.js";

const options = resolveKernelOptions({
  registry: { heartbeatTtlMs: 1000, zombieAfterMs: 3000, reapAfterMs: 10_000 },
}).registry;
const fields: AgentFields = {
  name: "summarizer",
  version: "1",
  endpoint: "127.0.0.1:50061",
  capabilities: [
    { name: "summarize", version: "1", attributes: { model: "small", lang: "en" } },
    { name: "translate", version: "1", attributes: {} },
  ],
  labels: { zone: "a", tier: "edge" },
};
const actor = { id: "test", correlationId: "c-1" };

function open(path: string) {
  const db = openDatabase({ path });
  migrateUp(db, MIGRATIONS);
  const clock = createManualClock();
  const registry = createRegistry(
    {
      db,
      events: createOutbox(createSqliteOutboxStore(db), { source: "edge-test", clock }),
      audit: createAuditLog(db, clock),
      clock,
      logger: createSilentLogger(),
    },
    options,
  );
  return { db, clock, registry };
}

const count = (db: ReturnType<typeof open>["db"], table: string) =>
  (db.prepare(`SELECT count(*) AS n FROM ${table}`).get() as { n: number }).n;

test("registry idempotency - same key and content returns the same agent, also after a restart", (t) => {
  const dir = mkdtempSync(join(tmpdir(), "nops-idem-"));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const path = join(dir, "kernel.db");
  const first = open(path);
  const a = first.registry.registerIdempotent("acme", fields, "key-1", actor);
  t.false(a.replayed);
  const b = first.registry.registerIdempotent("acme", fields, "key-1", actor);
  t.true(b.replayed);
  t.is(b.agent.id, a.agent.id);
  t.is(count(first.db, "agents"), 1);
  t.is(count(first.db, "outbox"), 1, "a replay writes no event");
  first.registry.close();
  first.db.close();

  const second = open(path);
  // The same content with maps and capabilities in another order is the same content.
  const reordered: AgentFields = {
    ...fields,
    capabilities: [...fields.capabilities].reverse().map((c) => ({ ...c, attributes: { ...c.attributes } })),
    labels: { tier: "edge", zone: "a" },
  };
  const c = second.registry.registerIdempotent("acme", reordered, "key-1", actor);
  t.true(c.replayed);
  t.is(c.agent.id, a.agent.id);
  t.is(count(second.db, "agents"), 1);
  second.db.close();
});

test("registry idempotency - same key with different content is ALREADY_EXISTS and changes nothing", (t) => {
  const { db, registry } = open(":memory:");
  const a = registry.registerIdempotent("acme", fields, "key-1", actor);
  const err = t.throws(() => registry.registerIdempotent("acme", { ...fields, version: "2" }, "key-1", actor));
  t.true(err instanceof ConnectError);
  t.is((err as ConnectError).code, Code.AlreadyExists);
  t.regex((err as ConnectError).rawMessage, /different content/);
  t.is(registry.get("acme", a.agent.id).version, "1");
  t.is(count(db, "agents"), 1);
  // Keys are per tenant: another tenant may use the same key.
  const other = registry.registerIdempotent("globex", fields, "key-1", actor);
  t.false(other.replayed);
  t.not(other.agent.id, a.agent.id);
});

test("registry idempotency - an update does not make the original content conflict", (t) => {
  const { registry } = open(":memory:");
  const a = registry.registerIdempotent("acme", fields, "key-1", actor);
  registry.update("acme", a.agent.id, { ...fields, version: "9" }, ["version"], actor);
  const b = registry.registerIdempotent("acme", fields, "key-1", actor);
  t.true(b.replayed);
  t.is(b.agent.version, "9", "the replay answers with the agent as it is now");
});

test("registry idempotency - deregistering or reaping the agent frees its key", (t) => {
  const { db, clock, registry } = open(":memory:");
  const a = registry.registerIdempotent("acme", fields, "key-1", actor);
  registry.deregister("acme", a.agent.id, "bye", actor);
  t.is(count(db, "agent_idempotency"), 0);
  const b = registry.registerIdempotent("acme", fields, "key-1", actor);
  t.false(b.replayed);
  t.not(b.agent.id, a.agent.id);

  clock.advance(10_000);
  registry.sweep();
  t.is(count(db, "agents"), 0, "reaped");
  t.is(count(db, "agent_idempotency"), 0);
  const c = registry.registerIdempotent("acme", { ...fields, version: "3" }, "key-1", actor);
  t.false(c.replayed, "after a reap the key registers a new agent, with any content");
});

test("registry idempotency - the content hash ignores map order and sees every field", (t) => {
  const base = registrationHash(fields);
  t.is(registrationHash({ ...fields, labels: { tier: "edge", zone: "a" } }), base);
  for (const changed of [
    { ...fields, name: "x" },
    { ...fields, version: "2" },
    { ...fields, endpoint: "127.0.0.1:2" },
    { ...fields, labels: { zone: "b", tier: "edge" } },
    { ...fields, capabilities: fields.capabilities.slice(1) },
  ]) {
    t.not(registrationHash(changed), base);
  }
});

test("migration 0006 - down drops the idempotency table and up restores it", (t) => {
  const db = openDatabase({ path: ":memory:" });
  migrateUp(db, MIGRATIONS);
  // Down to just before 0006, whatever came after it.
  const later = MIGRATIONS.filter((m) => m.version >= 6).map((m) => m.version);
  t.deepEqual(migrateDown(db, MIGRATIONS, later.length), [...later].reverse());
  t.throws(() => db.prepare("SELECT * FROM agent_idempotency").all(), { any: true, message: /no such table/ });
  t.deepEqual(migrateUp(db, MIGRATIONS), later);
  t.is(count(db, "agent_idempotency"), 0);
});

// The finding: a client that gives up after 1 ms and retries used to leave one agent per attempt,
// because the kernel finishes the registration after the client's deadline has passed.
for (const transport of BOTH) {
  test(`registry idempotency - 10 retries with a 1 ms deadline leave exactly one agent over ${transport}`, async (t) => {
    const k = await startTestKernel(t);
    const client = k.client(AgentRegistryService, transport);
    const request = {
      tenant: "acme",
      name: "summarizer",
      version: "1",
      endpoint: "127.0.0.1:50061",
      capabilities: [{ name: "summarize", version: "1" }],
      idempotencyKey: "retry-me",
    };
    const outcomes: string[] = [];
    for (let attempt = 0; attempt < 10; attempt++) {
      try {
        await client.registerAgent(request, { timeoutMs: 1 });
        outcomes.push("ok");
      } catch (e) {
        outcomes.push(Code[ConnectError.from(e).code] ?? "unknown");
      }
    }
    t.true(
      outcomes.every((o) => o === "ok" || o === "DeadlineExceeded"),
      outcomes.join(","),
    );
    // A last attempt without a deadline returns the one agent, marked as a replay if any earlier one landed.
    const last = await client.registerAgent(request);
    const listed = await client.listAgents({ tenant: "acme" });
    t.is(listed.agents.length, 1, `agents after retries: ${listed.agents.length}`);
    t.is(listed.agents[0]?.id, last.agent?.id);
    const conflict = await t.throwsAsync(client.registerAgent({ ...request, version: "2" }));
    t.is(ConnectError.from(conflict).code, Code.AlreadyExists);
    t.is((await client.listAgents({ tenant: "acme" })).agents.length, 1);
  });
}

test("registry idempotency - an invalid key is INVALID_ARGUMENT naming the field", async (t) => {
  const k = await startTestKernel(t);
  const client = k.client(AgentRegistryService, "grpc-js");
  for (const key of ["has space", "x".repeat(129), "tab\t"]) {
    const err = ConnectError.from(
      await t.throwsAsync(
        client.registerAgent({ tenant: "acme", name: "a", version: "1", endpoint: "127.0.0.1:1", idempotencyKey: key }),
      ),
    );
    t.is(err.code, Code.InvalidArgument);
    t.true(err.rawMessage.startsWith("idempotency_key:"), err.rawMessage);
  }
});
