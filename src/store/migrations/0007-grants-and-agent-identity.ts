import type { Migration } from "../migrator.js";

/**
 * Invoke grants of API keys and the SPIFFE ID each agent's endpoint must present. Both are new
 * tables (never new columns of old ones), so a down-then-up keeps every key and agent: a key with
 * no grants row was made before grants existed and keeps the reach it had ("*"); an agent with no
 * identity row is held to the ID scheme's agent id (docs/routing.md).
 */
export const migration0007: Migration = {
  version: 7,
  name: "grants-and-agent-identity",
  up: `
    CREATE TABLE api_key_grants (
      key_id TEXT PRIMARY KEY REFERENCES api_keys(key_id) ON DELETE CASCADE,
      invoke TEXT NOT NULL          -- JSON ["*" | capability | "prefix.*" | "prefix/*", ...]
    );
    CREATE TABLE agent_identities (
      agent_id TEXT PRIMARY KEY REFERENCES agents(id) ON DELETE CASCADE,
      spiffe_id TEXT NOT NULL
    );
  `,
  down: `
    DROP TABLE agent_identities;
    DROP TABLE api_key_grants;
  `,
};
