import type { Migration } from "../migrator.js";

/** The load each agent last reported, kept apart from the agent row because heartbeats rewrite it. */
export const migration0002: Migration = {
  version: 2,
  name: "agent-load",
  up: `
    CREATE TABLE agent_load (
      agent_id TEXT PRIMARY KEY REFERENCES agents(id) ON DELETE CASCADE,
      in_flight INTEGER NOT NULL,
      cpu REAL NOT NULL,
      latency_p50_ms REAL NOT NULL,
      latency_p99_ms REAL NOT NULL,
      error_rate REAL NOT NULL,
      reported_at INTEGER NOT NULL
    );
  `,
  down: `
    DROP TABLE agent_load;
  `,
};
