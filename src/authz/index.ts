/** The authorization capability's public surface: its options and the interceptor enforcing roles, scopes, tenants. */
export { createAuthzInterceptor } from "./authz-interceptor.js";
export { resolveAuthzOptions, type AuthzOptions } from "./authz-options.js";
export { createAuthorizer, type Authorizer, type Decision } from "./authorizer.js";
