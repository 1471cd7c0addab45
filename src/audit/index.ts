/**
 * The audit capability's public surface: the verifiable audit log (a hash chain whose rows are the
 * leaves of an RFC 6962 Merkle tree), signed checkpoints, the signer interface, AuditService and
 * the auditor of refused calls.
 */
export { createDenialAuditor, type DenialAuditor } from "./audit-denial.js";
export {
  type AuditEntry,
  type AuditLog,
  type AuditVerification,
  type StoredAuditEntry,
  createAuditLog,
} from "./audit-log.js";
export {
  type Checkpoint,
  type SignedCheckpoint,
  CheckpointError,
  checkpointBody,
  openCheckpoint,
  parseCheckpointBody,
  signCheckpoint,
} from "./checkpoint.js";
export {
  type Checkpointer,
  type CheckpointerOptions,
  CHECKPOINT_EVENT_TYPE,
  createCheckpointer,
} from "./checkpointer.js";
export { type AuditOptions, DEFAULT_AUDIT_OPTIONS, resolveAuditOptions } from "./audit-options.js";
export { createAuditService, MAX_ENTRIES_PER_CALL } from "./audit-service.js";
export { EMPTY_ROOT, leafHash, nodeHash, verifyConsistency, verifyInclusion } from "./merkle.js";
export {
  type FileSignerOptions,
  type Signer,
  type VerifierKey,
  createKeySigner,
  encodeVerifierKey,
  fileVerifierKeys,
  generateSigner,
  keyId,
  openFileSigner,
  parseVerifierKey,
  retiredKeysPath,
  rotateFileSigner,
  verifierKeyOf,
  verifyEd25519,
} from "./signer.js";
