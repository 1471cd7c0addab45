import type { Migration } from "../migrator.js";

/**
 * API keys. The key itself is never stored: each secret is kept as a BLAKE2b hash keyed with a
 * pepper that lives outside the database, so a copy of the file does not yield usable keys.
 */
export const migration0003: Migration = {
  version: 3,
  name: "api-keys",
  up: `
    CREATE TABLE api_keys (
      key_id TEXT PRIMARY KEY,
      tenant TEXT NOT NULL,
      agent_id TEXT NOT NULL,       -- '' for a tenant-wide key
      name TEXT NOT NULL,
      role TEXT NOT NULL,           -- ADMIN, OPERATOR or VIEWER
      scopes TEXT NOT NULL,         -- JSON ["service/operation[/tenant]"]
      created_at INTEGER NOT NULL,
      created_by TEXT NOT NULL,
      rotated_at INTEGER,
      revoked_at INTEGER
    );
    CREATE INDEX api_keys_tenant ON api_keys(tenant, key_id);

    -- At most two live secrets per key: the current one (expires_at NULL) and, after a
    -- rotation, the previous one until its grace period ends.
    CREATE TABLE api_key_secrets (
      key_id TEXT NOT NULL REFERENCES api_keys(key_id) ON DELETE CASCADE,
      generation INTEGER NOT NULL,
      hash BLOB NOT NULL,           -- BLAKE2b-256(key = pepper, message = full key string)
      created_at INTEGER NOT NULL,
      expires_at INTEGER,
      PRIMARY KEY (key_id, generation)
    );
  `,
  down: `
    DROP TABLE api_key_secrets;
    DROP TABLE api_keys;
  `,
};
