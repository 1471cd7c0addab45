import type { Migration } from "../migrator.js";

/**
 * RegisterAgent idempotency keys: one row per (tenant, key), written in the registration's
 * transaction and deleted with the agent, so a retried call finds the agent it created even
 * after a restart, and a key is free again once its agent is gone.
 */
export const migration0006: Migration = {
  version: 6,
  name: "agent-idempotency",
  up: `
    CREATE TABLE agent_idempotency (
      tenant TEXT NOT NULL,
      idempotency_key TEXT NOT NULL,
      agent_id TEXT NOT NULL REFERENCES agents(id) ON DELETE CASCADE,
      content_hash TEXT NOT NULL,   -- SHA-256 of the registration's canonical content
      created_at INTEGER NOT NULL,
      PRIMARY KEY (tenant, idempotency_key)
    );
    CREATE INDEX agent_idempotency_agent ON agent_idempotency(agent_id);
  `,
  down: `
    DROP TABLE agent_idempotency;
  `,
};
