import type { Migration } from "../migrator.js";

/** Agents, the transactional outbox and the hash-chained audit log. */
export const migration0001: Migration = {
  version: 1,
  name: "core",
  up: `
    CREATE TABLE agents (
      id TEXT PRIMARY KEY,
      tenant TEXT NOT NULL,
      name TEXT NOT NULL,
      version TEXT NOT NULL,
      endpoint TEXT NOT NULL,
      capabilities TEXT NOT NULL,   -- JSON [{name, version, attributes}]
      labels TEXT NOT NULL,         -- JSON {key: value}
      registered_at INTEGER NOT NULL,
      heartbeat_at INTEGER NOT NULL,
      revision INTEGER NOT NULL
    );
    CREATE INDEX agents_tenant ON agents(tenant, id);

    -- One row per event, written in the same transaction as the change it reports.
    CREATE TABLE outbox (
      id INTEGER PRIMARY KEY AUTOINCREMENT,
      event_id TEXT NOT NULL UNIQUE,
      type TEXT NOT NULL,
      tenant TEXT NOT NULL,
      subject TEXT NOT NULL,
      envelope BLOB NOT NULL,       -- nops.events.v1.EventEnvelope, binary
      created_at INTEGER NOT NULL,
      published_at INTEGER,         -- PubAck received from the leaf stream
      confirmed_at INTEGER          -- the hub stream holds it; only then may the row be pruned
    );
    CREATE INDEX outbox_unpublished ON outbox(id) WHERE published_at IS NULL;

    CREATE TABLE audit_log (
      seq INTEGER PRIMARY KEY,
      at INTEGER NOT NULL,
      actor TEXT NOT NULL,
      action TEXT NOT NULL,
      tenant TEXT NOT NULL,
      resource TEXT NOT NULL,
      outcome TEXT NOT NULL,
      details TEXT NOT NULL,        -- JSON
      correlation_id TEXT NOT NULL,
      prev_hash TEXT NOT NULL,
      hash TEXT NOT NULL
    );
    -- The chain's head, updated with every append, so deleting the newest rows is detected too.
    CREATE TABLE audit_head (
      id INTEGER PRIMARY KEY CHECK (id = 1),
      seq INTEGER NOT NULL,
      hash TEXT NOT NULL
    );
  `,
  down: `
    DROP TABLE audit_head;
    DROP TABLE audit_log;
    DROP TABLE outbox;
    DROP TABLE agents;
  `,
};
