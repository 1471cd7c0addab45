/** The authorization capability's public surface: its options and the interceptor that enforces roles, scopes and tenants. */
export { createAuthzInterceptor } from "./authz-interceptor.js";
export { resolveAuthzOptions, type AuthzOptions } from "./authz-options.js";
