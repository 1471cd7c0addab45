/** The events capability's public surface: the event bus, its RPC service and the supervised NATS leaf. */
export { resolveEventBusOptions, type EventBusOptions } from "./event-bus-options.js";
export {
  resolveEventBusServiceOptions,
  type EventBusServiceOptions,
  createEventBusService,
} from "./event-bus-service.js";
export { createEventBus } from "./event-bus.js";
export {
  createLeafSupervisor,
  findNatsServer,
  resolveLeafSupervisorOptions,
  type LeafSupervisor,
} from "./leaf-supervisor.js";
export { type PrePublishHook } from "./outbox-relay.js";
export {
  addHubEdge,
  readHubEdgeRegistry,
  revokeHubEdge,
  writeHubEdgeRegistry,
  type HubEdgeRegistry,
} from "./hub-edges.js";
export { edgeLinkPermissions, hubEdgeStreamConfig } from "./nats-config.js";
