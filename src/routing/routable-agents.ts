import type { Agent } from "../../gen/nops/kernel/v1/agent_registry_pb.js";

/**
 * The registry's view the router needs: agents of a tenant that offer a capability and may be
 * routed to (zombies already excluded). The router excludes open circuits itself.
 */
export interface RoutableAgents {
  listRoutable(tenant: string, capability: string): Agent[];
}
