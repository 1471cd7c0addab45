import type { Migration } from "../migrator.js";

/**
 * The kernel id (= edge id) a peer's verified descriptor carried at its last handshake: the edge
 * its event link targets (docs/events.md, "Kernel -> kernel events"). '' until established.
 */
export const migration0011: Migration = {
  version: 11,
  name: "peer-kernel-id",
  up: `ALTER TABLE federation_peers ADD COLUMN kernel_id TEXT NOT NULL DEFAULT '';`,
  down: `ALTER TABLE federation_peers DROP COLUMN kernel_id;`,
};
