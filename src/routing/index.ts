/** The routing capability's public surface: the router, its RPC service and its options. */
export { agentCallData } from "./agent-channel-pool.js";
export {
  createRouter,
  HOPS_HEADER,
  type InvokeParams,
  type InvokeResult,
  type RemoteAgents,
  type RemoteRoute,
  type StreamChunk,
} from "./router.js";
export type { Selection, SelectionConstraints } from "./agent-selector.js";
export { resolveRoutingOptions, type RoutingOptions, type ScoringOptions } from "./routing-options.js";
export { healthScore } from "./health-score.js";
export { resolveRoutingServiceOptions, type RoutingServiceOptions, createRoutingService } from "./routing-service.js";
export { createCircuitBreakers, type CircuitBreakers } from "./circuit-breakers.js";
