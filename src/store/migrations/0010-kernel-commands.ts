import type { Migration } from "../migrator.js";

/**
 * Hub -> edge commands (docs/events.md, "Hub -> edge commands"): how far the kernel has applied
 * the edge stream NOPS_CMD_IN (so a restart never applies a command twice) and one row per
 * command id it has settled, applied or dead-lettered with its reason.
 */
export const migration0010: Migration = {
  version: 10,
  name: "kernel-commands",
  up: `
    CREATE TABLE bus_stream_progress (
      stream TEXT PRIMARY KEY,
      last_seq INTEGER NOT NULL,
      updated_at INTEGER NOT NULL
    );
    CREATE TABLE kernel_commands (
      command_id TEXT PRIMARY KEY,
      stream_seq INTEGER NOT NULL,
      kind TEXT NOT NULL,
      outcome TEXT NOT NULL,        -- applied | dead-lettered
      reason TEXT NOT NULL DEFAULT '',
      settled_at INTEGER NOT NULL
    );
  `,
  down: `
    DROP TABLE kernel_commands;
    DROP TABLE bus_stream_progress;
  `,
};
