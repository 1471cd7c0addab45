import type { Migration } from "../migrator.js";

/** Break-glass grants already used, so a replay is refused across restarts too. */
export const migration0005: Migration = {
  version: 5,
  name: "egress-override-uses",
  up: `
    CREATE TABLE egress_override_uses (
      grant_id TEXT PRIMARY KEY,
      expires_at INTEGER NOT NULL
    );
  `,
  down: `
    DROP TABLE egress_override_uses;
  `,
};
