/** The reference DGE's public surface, plus the codes and signature scheme the kernel's DGE client shares with it. */
export {
  egressClassName,
  piiKindOf,
  tierOf,
  type TierName,
  EGRESS_CLASS_NAMES,
  type EgressClassName,
  DGE_ANSWER_CODES,
} from "./dge-codes.js";
export { destinationAllowed } from "./dge-policies.js";
export { resolveDgeServerOptions, type DgeServerOptions, startDgeServer, type DgeServer } from "./dge-server.js";
export {
  createDgeSignatureVerifier,
  DEFAULT_DGE_MAX_SKEW_MS,
  DGE_SIGNATURE_HEADER,
  DgeSignatureError,
} from "./dge-signature.js";
