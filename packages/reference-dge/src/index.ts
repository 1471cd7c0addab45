/**
 * The reference DGE's public entry: the server, its options and the pieces tests and tools use (the classifier,
 * the signer). The kernel starts the embedded DGE through this entry only; it shares nothing else with it but
 * the contract (proto/nops/dge/v1, gen/).
 */
export {
  resolveDgeServerOptions,
  type DgeServerOptions,
  startDgeServer,
  type DgeServer,
  type DgeServerDeps,
} from "./dge-server.js";
export {
  DEFAULT_DGE_POLICY,
  resolveDgePoliciesOptions,
  resolveDgePolicySpec,
  type DgePoliciesOptions,
  type DgePolicySpec,
} from "./dge-policies.js";
export { classifyText } from "./dge-service.js";
export { detectPii, PII_KINDS, type PiiKind, type Detection, CLASSIFIER_VERSION } from "./pii-classifier.js";
export { DGE_SIGNATURE_HEADER, signDgeResponse } from "./dge-signature.js";
