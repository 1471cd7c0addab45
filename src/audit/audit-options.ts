import { join, resolve } from "node:path";
import { readInt, readSection, readString } from "../common/index.js";

/** The `audit` config section (docs/audit.md). */
export interface AuditOptions {
  /**
   * The checkpoint signing key (file signer, mode 0600), created on first start. Must be outside
   * the data directory. @default "<dataDir>.keys/audit-checkpoint.key"
   */
  keyFile: string;
  /** The log's origin line and key name. @default "nops.kernel/<edgeId>/audit" */
  origin: string;
  /** A checkpoint is signed this often when the log grew; 0: only on demand (GetCheckpoint fresh). @default 60000 */
  checkpointIntervalMs: number;
  /** Tenant of the audit.checkpoint.issued.v1 events. @default "system" */
  systemTenant: string;
}

/** The raw defaults (empty strings are derived from the data directory and edge id). */
export const DEFAULT_AUDIT_OPTIONS = { keyFile: "", origin: "", checkpointIntervalMs: 60_000, systemTenant: "system" };

/** Validates the `audit` section and fills defaults; throws ConfigError naming the field. */
export function resolveAuditOptions(
  input: unknown,
  ctx: { dataDir: string; edgeId: string },
  path = "audit",
): AuditOptions {
  const d = DEFAULT_AUDIT_OPTIONS;
  const s = readSection(input, path, d);
  const keyFile = readString(s, "keyFile", path, d.keyFile);
  return {
    keyFile: keyFile || join(`${resolve(ctx.dataDir)}.keys`, "audit-checkpoint.key"),
    origin:
      readString(s, "origin", path, d.origin, { pattern: /^$|^[\x21-\x2a\x2c-\x7e]{1,200}$/ }) ||
      `nops.kernel/${ctx.edgeId}/audit`,
    checkpointIntervalMs: readInt(s, "checkpointIntervalMs", path, d.checkpointIntervalMs, 0, 24 * 3600_000),
    systemTenant: readString(s, "systemTenant", path, d.systemTenant, { nonEmpty: true }),
  };
}
