import type { Migration } from "../migrator.js";
import { migration0001 } from "./0001-core.js";
import { migration0002 } from "./0002-agent-load.js";
import { migration0003 } from "./0003-api-keys.js";
import { migration0004 } from "./0004-events.js";
import { migration0005 } from "./0005-egress.js";
import { migration0006 } from "./0006-agent-idempotency.js";
import { migration0007 } from "./0007-grants-and-agent-identity.js";
import { migration0008 } from "./0008-audit-tree.js";
import { migration0009 } from "./0009-federation-peers.js";
import { migration0010 } from "./0010-kernel-commands.js";
import { migration0011 } from "./0011-peer-kernel-id.js";
import { migration0012 } from "./0012-dge-policy-overrides.js";

/** Every migration, in version order. Append new ones; never edit one that has shipped. */
export const MIGRATIONS: readonly Migration[] = [
  migration0001,
  migration0002,
  migration0003,
  migration0004,
  migration0005,
  migration0006,
  migration0007,
  migration0008,
  migration0009,
  migration0010,
  migration0011,
  migration0012,
];
