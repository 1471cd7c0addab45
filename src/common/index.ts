/**
 * Small things every layer imports and none owns: clock, internal errors, option readers, readiness types,
 * the RPC error vocabulary and the tenant id pattern.
 */
export { type Clock, type TimerHandle, type ManualClock, systemClock, createManualClock } from "./clock.js";
export { ConfigError, KernelError, StoreError } from "./errors.js";
export {
  readBool,
  readInt,
  readSection,
  readString,
  readStringList,
  type RawSection,
  readObject,
  readOptionalStringList,
  POLICY_LIST,
  readOptionalString,
  readNumber,
} from "./fields.js";
export { type DependencyStatus, type DependencyState, type ReadinessReport } from "./readiness.js";
export { type ProcessIdentity, processIdentity, isRunning, parseProcessIdentity } from "./process-identity.js";
export {
  alreadyExists,
  canceled,
  checkTenant,
  deadlineExceeded,
  failedPrecondition,
  internalError,
  invalidArgument,
  notFound,
  permissionDenied,
  resourceExhausted,
  unauthenticated,
  unavailable,
} from "./rpc-errors.js";
export { TENANT_PATTERN, TENANT_PROBLEM } from "./tenant.js";
export { EDGE_ID_PATTERN } from "./edge-id.js";
export {
  DependencyUnavailableError,
  DependencyTimeoutError,
  type DependencyBreakerOptions,
  type DependencyBreakerDeps,
  type BreakerStatus,
  type BreakerCallOptions,
  type DependencyBreaker,
  DEFAULT_BREAKER_FAILURES_TO_TRIP,
  DEFAULT_BREAKER_HALF_OPEN_AFTER_MS,
  DEFAULT_BREAKER_PROBE_INTERVAL_MS,
  resolveDependencyBreakerOptions,
  createDependencyBreaker,
} from "./dependency-breaker.js";
export { compileObjectSchema, type CompiledSchema, MAX_SCHEMA_CHARS } from "./json-schema.js";
