import { TENANT_PATTERN } from "../common/index.js";
import type { AuditLog } from "../audit/index.js";
import { CommandRejectedError, type CommandHandler } from "../events/index.js";
import { PeerRegistryError, type PeerRegistry } from "../federation/index.js";
import { KEY_ID_PATTERN, type ApiKeyStore } from "../identity/api-keys/api-key-store.js";
import type { KernelCommand } from "../../gen/nops/events/v1/kernel_command_pb.js";
import type { HubDgePolicies } from "./hub-dge-policies.js";

/** Audit actor of a hub command: "hub:<issued_by>". */
export function hubActor(command: KernelCommand): string {
  return `hub:${command.issuedBy}`;
}

/**
 * Applies hub -> edge commands (docs/events.md, "Hub -> edge commands") through the same code
 * paths as local configuration: the peer registry (which validates and audits each change) and
 * the API key store (audited here, as ApiKeyService audits a local revocation) and the embedded DGE's
 * policies. A command the path refuses becomes CommandRejectedError, so the event bus dead-letters it
 * with its reason.
 */
export function createHubCommandHandler(deps: {
  peers: PeerRegistry;
  apiKeys: ApiKeyStore;
  audit: AuditLog;
  /** The embedded DGE's policies; absent when the DGE is external (dge.url set). */
  dgePolicies?: HubDgePolicies;
}): CommandHandler {
  const { peers, apiKeys, audit, dgePolicies } = deps;
  const rejectPeerErrors = <T>(f: () => T): T => {
    try {
      return f();
    } catch (err) {
      if (err instanceof PeerRegistryError) throw new CommandRejectedError(err.message);
      throw err;
    }
  };
  return {
    apply(command) {
      const actor = hubActor(command);
      const c = command.command;
      switch (c.case) {
        case "revokeApiKey": {
          const { tenant, keyId } = c.value;
          if (!TENANT_PATTERN.test(tenant)) throw new CommandRejectedError("revoke_api_key.tenant: is not a tenant id");
          if (!KEY_ID_PATTERN.test(keyId))
            throw new CommandRejectedError("revoke_api_key.key_id: must be 24 lowercase hex characters");
          if (!apiKeys.revoke(tenant, keyId))
            throw new CommandRejectedError(`revoke_api_key: tenant ${tenant} has no api key ${keyId}`);
          audit.append({
            actor,
            action: "apikey.revoke",
            tenant,
            resource: `apikey/${keyId}`,
            outcome: "ok",
            details: { command: command.id },
          });
          return;
        }
        case "setPeerAgreement": {
          const { peerSpiffeId, inbound, outbound } = c.value;
          rejectPeerErrors(() =>
            peers.setAgreement(
              peerSpiffeId,
              {
                inbound: { tenants: inbound?.tenants ?? [], capabilities: inbound?.capabilities ?? [] },
                outbound: { tenants: outbound?.tenants ?? [], capabilities: outbound?.capabilities ?? [] },
              },
              actor,
            ),
          );
          return;
        }
        case "quarantinePeer": {
          const { peerSpiffeId, reason } = c.value;
          if (reason.trim() === "") throw new CommandRejectedError("quarantine_peer.reason: is empty");
          rejectPeerErrors(() => peers.quarantine(peerSpiffeId, reason, actor));
          return;
        }
        case "setDgePolicy":
          if (!dgePolicies)
            throw new CommandRejectedError(
              "set_dge_policy: this edge's DGE is external; its policies are managed there",
            );
          return dgePolicies.apply(c.value, { commandId: command.id, actor });
        default:
          throw new CommandRejectedError("no command is set");
      }
    },
    rejected(command, seq, reason) {
      audit.append({
        actor: command ? hubActor(command) : "hub:unknown",
        action: `hub.command.${command?.command.case ?? "undecodable"}`,
        tenant: "",
        resource: `command/${command?.id || `seq-${seq}`}`,
        outcome: "denied",
        details: { reason: reason.slice(0, 500), seq },
      });
    },
  };
}
