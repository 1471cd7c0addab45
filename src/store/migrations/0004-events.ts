import type { Migration } from "../migrator.js";

/**
 * Event bus bookkeeping: publish receipts (edge stream sequence per outbox row, so hub
 * confirmation can be computed from the hub stream's sourced position), egress-blocked rows,
 * extra NATS headers of published events, idempotency keys and the consumer inbox.
 * New tables only: the outbox itself (0001) is untouched, so a down-then-up loses no outbox row.
 */
export const migration0004: Migration = {
  version: 4,
  name: "events",
  up: `
    -- One row per outbox row the leaf stream acknowledged (PubAck). stream_seq is the edge
    -- stream sequence; the hub has the row once its stream has sourced that sequence.
    CREATE TABLE outbox_publications (
      outbox_id INTEGER PRIMARY KEY,
      stream_seq INTEGER NOT NULL,
      published_at INTEGER NOT NULL
    );
    CREATE INDEX outbox_publications_seq ON outbox_publications(stream_seq);

    -- Rows the egress guard refused to let cross to the hub: never published, never pruned,
    -- listed for operators until released (re-evaluated) or discarded by them.
    CREATE TABLE outbox_blocked (
      outbox_id INTEGER PRIMARY KEY,
      reason TEXT NOT NULL,
      blocked_at INTEGER NOT NULL
    );

    -- NATS headers given to EventBusService.Publish (JSON object), published with the row.
    CREATE TABLE outbox_headers (
      outbox_id INTEGER PRIMARY KEY,
      headers TEXT NOT NULL
    );

    -- Publish idempotency: the first result per (tenant, key) until expires_at.
    CREATE TABLE event_idempotency (
      tenant TEXT NOT NULL,
      key TEXT NOT NULL,
      request_hash TEXT NOT NULL,   -- sha256 of the request, to refuse a reused key with a different request
      outbox_id INTEGER NOT NULL,
      event_id TEXT NOT NULL,
      subject TEXT NOT NULL,
      created_at INTEGER NOT NULL,
      expires_at INTEGER NOT NULL,
      PRIMARY KEY (tenant, key)
    ) WITHOUT ROWID;
    CREATE INDEX event_idempotency_expiry ON event_idempotency(expires_at);

    -- Consumers that apply events record each applied event id here in the same transaction.
    CREATE TABLE event_inbox (
      consumer TEXT NOT NULL,
      event_id TEXT NOT NULL,
      applied_at INTEGER NOT NULL,
      PRIMARY KEY (consumer, event_id)
    ) WITHOUT ROWID;
    CREATE INDEX event_inbox_applied ON event_inbox(applied_at);
  `,
  down: `
    DROP TABLE event_inbox;
    DROP TABLE event_idempotency;
    DROP TABLE outbox_headers;
    DROP TABLE outbox_blocked;
    DROP TABLE outbox_publications;
  `,
};
