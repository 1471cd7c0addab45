// Public surface of SPIFFE workload identity: IDs, SVIDs, bundles, sources, peer checks, TLS material.
export { parseSpiffeId, parseTrustDomain, isSpiffeId, SpiffeIdError, type SpiffeId } from "./spiffe-id.js";
export { parseX509Svid, validateSvidLeaf, SvidError, type X509Svid, type X509SvidInput } from "./x509-svid.js";
export {
  createX509Bundle,
  createX509BundleSet,
  bundleSetToPem,
  BundleError,
  type X509Authority,
  type X509Bundle,
  type X509BundleSet,
} from "./x509-bundle.js";
export { splitDerCertificates, derToPem, pemToDer, DerEncodingError } from "./x509-encoding.js";
export {
  verifyPeer,
  PeerVerificationError,
  type PeerRejectReason,
  type VerifiedPeer,
  type VerifyPeerOptions,
} from "./verify-peer.js";
export { X509SourceStoppedError, type X509Context, type X509Source, type X509UpdateListener } from "./x509-source.js";
export {
  createWorkloadX509Source,
  resolveWorkloadX509SourceOptions,
  workloadEndpointTarget,
  WorkloadApiError,
  DEFAULT_WORKLOAD_API_HINT,
  DEFAULT_WORKLOAD_API_INITIAL_BACKOFF_MS,
  DEFAULT_WORKLOAD_API_MAX_BACKOFF_MS,
  type WorkloadX509SourceDeps,
  type WorkloadX509SourceOptions,
} from "./workload-api-client.js";
export {
  createDevX509Source,
  resolveDevX509SourceOptions,
  DEV_IDENTITY_FILES,
  DEFAULT_DEV_IDENTITY_DIR,
  DEFAULT_DEV_TRUST_DOMAIN,
  DEFAULT_DEV_DEVELOPER_ID,
  DEFAULT_DEV_DNS_NAMES,
  DEFAULT_DEV_IP_ADDRESSES,
  DEFAULT_DEV_CA_TTL_MS,
  DEFAULT_DEV_SVID_TTL_MS,
  DEFAULT_DEV_RENEW_CHECK_INTERVAL_MS,
  type DevX509SourceDeps,
  type DevX509SourceOptions,
} from "./dev-issuer.js";
export {
  createTlsMaterial,
  TlsMaterialError,
  type ClientTlsOptions,
  type TlsMaterial,
  type TlsMaterialDeps,
} from "./tls-material.js";
export { withFederatedBundles, type FederatedBundles } from "./federated-x509-source.js";
