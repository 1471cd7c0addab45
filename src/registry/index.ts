/** The registry capability's public surface: the agent registry, its RPC service and its options. */
export { type RegistryOptions } from "./registry-options.js";
export { createRegistryService } from "./registry-service.js";
export { createRegistry, type Registry } from "./registry.js";
