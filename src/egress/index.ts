/**
 * The Egress Guard's public surface: the guard, its per-transport doors, the break-glass grant and the kernel's
 * side of the DGE contract (enum names, answer codes, response signature check).
 */
export {
  NO_VERDICT_REASONS,
  createEgressGuard,
  resolveEgressGuardOptions,
  egressDeniedError,
  type EgressGuard,
  type EgressGuardDeps,
  type EgressGuardOptions,
  type EgressRequest,
  type EgressDecision,
} from "./egress-guard.js";
export {
  createConnectEgressInterceptor,
  createEgressPreSend,
  TENANT_HEADER,
  type EgressPreSend,
} from "./egress-interceptors.js";
export { createGuardedFetch, MAX_GUARDED_BODY_BYTES, type GuardedFetch } from "./guarded-fetch.js";
export {
  forwardableTraceContext,
  validTraceparent,
  validTracestate,
  headersText,
  isOpaqueId,
} from "./outbound-headers.js";
export {
  createNatsEgressHook,
  subjectMatches,
  type NatsPrePublishHook,
  type NatsEgressHookOptions,
  type NatsHeadersLike,
} from "./nats-egress-hook.js";
export {
  encodeOverrideGrant,
  grantCovers,
  OVERRIDE_HEADER,
  MAX_OVERRIDE_TTL_MS,
  type OverrideGrant,
} from "./override-grant.js";
export { bytesText } from "./payload-text.js";
export {
  DGE_ANSWER_CODES,
  EGRESS_CLASS_NAMES,
  type EgressClassName,
  type TierName,
  egressClassName,
  piiKindOf,
  tierOf,
} from "./dge-contract.js";
export {
  createDgeSignatureVerifier,
  DEFAULT_DGE_MAX_SKEW_MS,
  DGE_SIGNATURE_HEADER,
  DgeSignatureError,
  type DgeSignatureVerifier,
} from "./dge-signature-verifier.js";
