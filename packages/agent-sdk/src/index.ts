export {
  createAgent,
  hasCode,
  type Agent,
  type AgentEvents,
  type AgentLogger,
  type AgentOptions,
  type AgentState,
  type ApiKeyRotationOptions,
  type DeliveredEvent,
  type DrainOptions,
  type HeartbeatOptions,
  type InvokeOptions,
  type InvokeResult,
  type PublishOptions,
  type PublishResult,
  type RegistrationOptions,
  type SubscribeOptions,
  type Subscription,
} from "./create-agent.js";
export type {
  CapabilityDefinition,
  CapabilityHandler,
  CapabilityStreamHandler,
  HandlerResult,
  InvocationContext,
} from "./agent-server.js";
export {
  agentSpiffeId,
  DEFAULT_DEV_DIR,
  DEFAULT_TRUST_DOMAIN,
  type DevIdentityOptions,
  type FileIdentityOptions,
  type IdentityOptions,
  type TlsIdentity,
  type WorkloadApiIdentityOptions,
} from "./identity.js";
export {
  AgentSdkError,
  AgentStoppedError,
  ConfigurationError,
  HandlerError,
  IdentityError,
  KernelCallError,
  KernelUnavailableError,
  PermissionError,
  RegistrationError,
} from "./errors.js";
export { AgentStatus } from "./gen/nops/kernel/v1/agent_registry_pb.js";
export { Code } from "@connectrpc/connect";
export { connectKernelTools, type KernelTools, type KernelToolsOptions, type ToolCallOptions } from "./kernel-tools.js";
