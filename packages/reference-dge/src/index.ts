/**
 * The reference DGE's public entry: the server, its options and the pieces tests and tools use (the PII kinds,
 * the signer). The kernel starts the embedded DGE through this entry only; it shares nothing else with it but
 * the contract (proto/nops/dge/v1, gen/). The classifier itself (pii-classifier.ts) is not exported: only the
 * classification worker threads load it, never the kernel's main thread.
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
export { PII_KINDS, type PiiKind, type Detection, CLASSIFIER_VERSION } from "./pii-kinds.js";
export { DGE_SIGNATURE_HEADER, signDgeResponse } from "./dge-signature.js";
