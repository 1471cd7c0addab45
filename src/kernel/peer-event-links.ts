import type { EventBus } from "../events/event-bus.js";
import type { PeerEventLink } from "../events/event-federation.js";
import type { PeerRecord, PeerRegistry } from "../federation/index.js";

/**
 * The event links of established peers whose kernel id a verified handshake recorded: edge = that
 * id, tenants = the agreement's (docs/events.md, "Kernel -> kernel events"). A pending or
 * quarantined peer has none.
 */
export function peerEventLinks(peers: readonly PeerRecord[]): PeerEventLink[] {
  return peers
    .filter((p) => p.state === "established" && p.kernelId !== "")
    .map((p) => ({
      peer: p.spiffeId,
      edge: p.kernelId,
      outboundTenants: p.agreement.outbound.tenants,
      inboundTenants: p.agreement.inbound.tenants,
    }));
}

/** Keeps the bus's peer links equal to the registry's, on every peer change; returns the unsubscribe. */
export function followPeerEventLinks(registry: PeerRegistry, bus: Pick<EventBus, "setPeerLinks">): () => void {
  const apply = () => bus.setPeerLinks(peerEventLinks(registry.list()));
  apply();
  return registry.onPeerChange(apply);
}
