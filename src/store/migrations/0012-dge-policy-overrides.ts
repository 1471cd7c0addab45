import type { Migration } from "../migrator.js";

/**
 * DGE policies set by the hub (docs/egress.md, "Where policies come from"): one row per tenant
 * ('' for a tier's default) and tier, applied on top of the config file's policies at every start.
 */
export const migration0012: Migration = {
  version: 12,
  name: "dge-policy-overrides",
  up: `
    CREATE TABLE dge_policy_overrides (
      tenant TEXT NOT NULL,         -- '' = the tier's default
      tier TEXT NOT NULL,           -- "1" | "2" | "3"
      spec TEXT NOT NULL,           -- the validated DgePolicySpec, JSON
      command_id TEXT NOT NULL,
      updated_at INTEGER NOT NULL,
      PRIMARY KEY (tenant, tier)
    );
  `,
  down: `
    DROP TABLE dge_policy_overrides;
  `,
};
