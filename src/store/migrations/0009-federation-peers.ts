import type { Migration } from "../migrator.js";

/**
 * The federation peer registry (docs/federation.md): one row per pinned peer kernel, its
 * agreement and the bundle of its trust domain now trusted. A peer's trust domain is unique:
 * federation trusts a bundle per trust domain.
 */
export const migration0009: Migration = {
  version: 9,
  name: "federation-peers",
  up: `
    CREATE TABLE federation_peers (
      spiffe_id TEXT PRIMARY KEY,
      trust_domain TEXT NOT NULL UNIQUE,
      grpc_endpoint TEXT NOT NULL,
      http_endpoint TEXT NOT NULL,
      bundle_endpoint_url TEXT NOT NULL,
      bundle_endpoint_profile TEXT NOT NULL,  -- https_spiffe | https_web
      agreement TEXT NOT NULL,                -- JSON {inbound:{tenants,capabilities},outbound:{...}}
      state TEXT NOT NULL,                    -- pending | established | quarantined
      quarantine_reason TEXT NOT NULL DEFAULT '',
      pinned_fingerprint TEXT NOT NULL DEFAULT '', -- SHA-256 of one authority, when no bundle was given
      bundle TEXT,                            -- SPIFFE bundle JSON now trusted, NULL until known
      bundle_sequence INTEGER NOT NULL DEFAULT 0,
      bundle_refresh_hint_s INTEGER NOT NULL DEFAULT 0,
      bundle_refreshed_at INTEGER NOT NULL DEFAULT 0,
      established_at INTEGER NOT NULL DEFAULT 0,
      created_at INTEGER NOT NULL,
      updated_at INTEGER NOT NULL
    );
  `,
  down: `
    DROP TABLE federation_peers;
  `,
};
