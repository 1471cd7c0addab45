/**
 * The identity capability's public surface: principals and scopes, caller authentication, API keys,
 * request signing and the kernel's own SPIFFE identity.
 */
export { createApiKeyService } from "./api-keys/api-key-service.js";
export { resolveAuthnOptions, type AuthnOptions } from "./authn-interceptor.js";
export { resolveJwtVerifierOptions } from "./jwt/jwt-verifier.js";
export { type IdentityOptions, type IdentitySource, createKernelIdentity } from "./kernel-identity.js";
export { isAllTenants, type Principal, type Role, kPrincipal, ROLES, isRole, readRoles } from "./principal.js";
export { createNonceStore } from "./request-signing/nonce-store.js";
export { createRequestSigningInterceptor } from "./request-signing/request-signing-interceptor.js";
export { resolveRequestSigningOptions, type RequestSigningOptions } from "./request-signing/request-signing-options.js";
export { grantAllows, parseRequiredScope, parseScopeGrant, type RequiredScope, type ScopeGrant } from "./scope.js";
export { agentSpiffeId, DEFAULT_TRUST_DOMAIN, resolveSpiffePrincipalOptions } from "./spiffe-principal-mapper.js";
export {
  INVOKE_GRANT_PROBLEM,
  invokeGrantAllows,
  invokeGrantCovers,
  invokeRestricted,
  isInvokeGrant,
  mayInvoke,
} from "./invoke-grant.js";
export {
  createX509Bundle,
  parseSpiffeId,
  pemToDer,
  verifyPeer,
  PeerVerificationError,
  type FederatedBundles,
  type VerifiedPeer,
  type X509Bundle,
  type X509BundleSet,
  type X509Source,
} from "./spiffe/index.js";
