/** The rate-limit capability's public surface: its options and the interceptor. */
export { createRateLimitInterceptor } from "./rate-limit-interceptor.js";
export { resolveRateLimitOptions, type RateLimitOptions } from "./rate-limit-options.js";
