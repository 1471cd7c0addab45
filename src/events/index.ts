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
  createLeafLog,
  listenLeafSyslog,
  type HubLinkRefusals,
  type LeafLog,
  type LeafSyslogListener,
} from "./leaf-log.js";
export { createThreadPublishWriter, type PublishWriter } from "./publish-writer.js";
export {
  CommandRejectedError,
  KERNEL_COMMAND_VERSION,
  type CommandHandler,
  type CommandInboxStatus,
} from "./kernel-commands.js";
export {
  BUS_STREAMS,
  commandSubject,
  ensureHubStreams,
  federatedSubject,
  publishCommand,
  type HubEdge,
  type HubStreamsOptions,
} from "./hub-streams.js";
export {
  addHubEdge,
  readHubEdgeRegistry,
  revokeHubEdge,
  writeHubEdgeRegistry,
  type HubEdgeRegistry,
} from "./hub-edges.js";
export { edgeLinkPermissions, hubEdgeStreamConfig, hubEdgeStreamName } from "./nats-config.js";
