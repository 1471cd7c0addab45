/** The audit capability's public surface: the hash-chained audit log and the auditor of refused calls. */
export { createDenialAuditor, type DenialAuditor } from "./audit-denial.js";
export { type AuditLog, createAuditLog } from "./audit-log.js";
