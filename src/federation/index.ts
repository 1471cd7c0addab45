/** The federation capability's public surface: peer registry, handshake, bundle endpoint, FederationService. */
export {
  createFederation,
  peerToProto,
  type Federation,
  type FederationDeps,
  type FederationIdentity,
} from "./federation.js";
export { resolveFederationOptions, DEFAULT_FEDERATION_OPTIONS, type FederationOptions } from "./federation-options.js";
export {
  createPeerRegistry,
  PeerRegistryError,
  type Agreement,
  type AgreementClause,
  type PeerPin,
  type PeerRecord,
  type PeerRegistry,
} from "./peer-registry.js";
export {
  authorityFingerprint,
  bundleFingerprint,
  encodeSpiffeBundle,
  parseSpiffeBundle,
  SpiffeBundleError,
  type SpiffeBundle,
} from "./spiffe-bundle.js";
export {
  createDelegations,
  DEFAULT_DELEGATION_OPTIONS,
  DELEGATION_JWS_TYPE,
  type Delegation,
  type DelegationClaims,
  type DelegationOptions,
  type Delegations,
} from "./delegation.js";
export { FederationRefusal } from "./kernel-jws.js";
export { createPeerPrincipalInterceptor, DELEGATION_HEADER, type PeerPrincipalDeps } from "./peer-principal.js";
export { createPeerRoutes, KERNEL_LABEL, type PeerRoutes, type PeerRoutesDeps } from "./peer-routes.js";
