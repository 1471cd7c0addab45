import { dirname, join } from "node:path";
import { ConfigError } from "../common/errors.js";
import { commaList, parseCommandFlags } from "./command-flags.js";
import {
  addHubEdge,
  edgeLinkPermissions,
  readHubEdgeRegistry,
  revokeHubEdge,
  writeHubEdgeRegistry,
} from "../events/index.js";

/** Usage of `nops-kernel hub`. */
export const HUB_USAGE = `usage: nops-kernel hub add-edge --registry <edges.json> --edge <id> --tenants <a,b|*>
             --secret-out <file> [--domain <jetstream domain>] [--hub-domain <hub>]
             [--create-hub-stream] [--users-out <edge-users.conf>] [--auth password|nkey]
       nops-kernel hub revoke-edge --registry <edges.json> --edge <id> [--users-out <file>]
       nops-kernel hub list-edges --registry <edges.json>
The registry and edge-users.conf (default: next to the registry) are written 0600; nats/hub.conf
includes edge-users.conf. Reload the hub afterwards (docs/events.md, "Per-edge identity").`;

const VALUE_FLAGS = new Set([
  "--registry",
  "--edge",
  "--tenants",
  "--secret-out",
  "--domain",
  "--hub-domain",
  "--users-out",
  "--auth",
]);

/** Runs `nops-kernel hub <sub>`: the hub's registry of edges and their leafnode users. */
export function runHubCommand(sub: string | undefined, args: readonly string[], out: (s: string) => void): number {
  if (sub === undefined || sub === "help") {
    out(HUB_USAGE);
    return sub === undefined ? 2 : 0;
  }
  const { values, switches } = parseCommandFlags("hub", args, VALUE_FLAGS, new Set(["--create-hub-stream"]));
  const createHubStream = switches.has("--create-hub-stream");
  const need = (name: string): string => {
    const v = values.get(name);
    if (v === undefined) throw new ConfigError(`hub ${sub} needs ${name}`);
    return v;
  };
  const registryPath = need("--registry");
  const usersPath = values.get("--users-out") ?? join(dirname(registryPath), "edge-users.conf");
  const registry = readHubEdgeRegistry(registryPath, values.get("--hub-domain"));
  switch (sub) {
    case "add-edge": {
      const edgeId = need("--edge");
      const tenants = commaList(need("--tenants"));
      const secretPath = need("--secret-out");
      const domain = values.get("--domain");
      const auth = values.get("--auth") ?? "password";
      if (auth !== "password" && auth !== "nkey")
        throw new ConfigError(`--auth must be password or nkey (got ${auth})`);
      const next = addHubEdge(
        registry,
        { edgeId, tenants, createHubStream, ...(domain ? { domain } : {}) },
        secretPath,
        auth,
      );
      writeHubEdgeRegistry(registryPath, usersPath, next);
      const user = `edge-${edgeId}`;
      if (auth === "nkey") {
        out(`added ${edgeId} (nkey user, tenants ${tenants.join(",")}); nkey seed in ${secretPath}`);
        out(`edge leaf remote: nkey: <seed>, urls: nats-leaf://<hub-node>:7422 (every node; nats-server >= 2.10.8)`);
      } else {
        out(`added ${edgeId} (user ${user}, tenants ${tenants.join(",")}); secret in ${secretPath}`);
        out(`edge leaf remote: nats-leaf://${user}:<secret>@<hub-node>:7422 (one URL per hub node)`);
      }
      out(`now reload every hub node: nats-server --signal reload=<pid> (or SIGHUP)`);
      return 0;
    }
    case "revoke-edge": {
      const edgeId = need("--edge");
      writeHubEdgeRegistry(registryPath, usersPath, revokeHubEdge(registry, edgeId));
      out(`revoked ${edgeId}; reload every hub node, then restart them one at a time: nats-server does`);
      out(`not drop an established leaf connection on reload, only refuses its reconnection`);
      return 0;
    }
    case "list-edges": {
      for (const e of registry.edges) {
        const p = edgeLinkPermissions(e, registry.hubDomain);
        out(
          `${e.edgeId}\t${e.nkey !== undefined ? `nkey=${e.nkey}` : `user=${e.user ?? `edge-${e.edgeId}`}`}\tdomain=${e.domain ?? e.edgeId}\ttenants=${e.tenants.join(",")}\tpublish=${p.publish.length} subscribe=${p.subscribe.length} subjects`,
        );
      }
      return 0;
    }
    default:
      throw new ConfigError(`hub needs add-edge, revoke-edge or list-edges (got ${sub})`);
  }
}
