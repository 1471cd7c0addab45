import { chmodSync, existsSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { ConfigError } from "../common/index.js";
import { createUser } from "@nats-io/nkeys";
import { newEdgeSecret } from "./edge-credentials.js";
import { edgeLinkPermissions, renderEdgeUsersInclude, type EdgeGrant } from "./nats-config.js";

/** The hub's list of edges allowed on its leafnode port (a JSON file only the hub's operators read). */
export interface HubEdgeRegistry {
  /** JetStream domain of the hub (the edges' events.hubDomain). */
  hubDomain: string;
  edges: EdgeGrant[];
}

/** Reads the registry; a missing file is an empty registry for `hubDomain`. */
export function readHubEdgeRegistry(path: string, hubDomain = "hub"): HubEdgeRegistry {
  if (!existsSync(path)) return { hubDomain, edges: [] };
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(path, "utf8"));
  } catch (err) {
    throw new ConfigError(`${path}: not JSON (${err instanceof Error ? err.message : String(err)})`);
  }
  const r = raw as Partial<HubEdgeRegistry>;
  if (typeof r.hubDomain !== "string" || !Array.isArray(r.edges))
    throw new ConfigError(`${path}: expected { "hubDomain": string, "edges": [...] }`);
  for (const e of r.edges) {
    if (typeof e?.edgeId !== "string" || !Array.isArray(e.tenants))
      throw new ConfigError(`${path}: every edge needs edgeId, tenants and a password hash or nkey`);
    edgeLinkPermissions(e, r.hubDomain); // validates ids, domain and tenants
  }
  return { hubDomain: r.hubDomain, edges: r.edges };
}

// Written to a temp file then renamed, owner-only: the file holds the edges' password hashes.
function writePrivate(path: string, text: string): void {
  const tmp = `${path}.tmp-${process.pid}`;
  writeFileSync(tmp, text, { mode: 0o600 });
  chmodSync(tmp, 0o600);
  renameSync(tmp, path);
}

/** Writes the registry and the `users` include nats/hub.conf reads (both 0600). */
export function writeHubEdgeRegistry(path: string, usersPath: string, registry: HubEdgeRegistry): void {
  const text = renderEdgeUsersInclude(registry.edges, registry.hubDomain);
  writePrivate(path, JSON.stringify(registry, null, 2) + "\n");
  writePrivate(usersPath, text);
}

/**
 * Adds an edge with new credentials written to `secretPath` (0600) for the edge:
 * - auth "password": a random secret for the leaf remote URL; the registry keeps its bcrypt hash;
 * - auth "nkey": a user nkey seed for the leaf remote's `nkey:` (nats-server >= 2.10.8); the
 *   registry keeps only the public key.
 * Refuses an edge id, user or domain already present.
 */
export function addHubEdge(
  registry: HubEdgeRegistry,
  edge: Omit<EdgeGrant, "password" | "nkey">,
  secretPath: string,
  auth: "password" | "nkey" = "password",
): HubEdgeRegistry {
  const user = edge.user ?? `edge-${edge.edgeId}`;
  const domain = edge.domain ?? edge.edgeId;
  for (const e of registry.edges) {
    if (e.edgeId === edge.edgeId) throw new ConfigError(`edge ${edge.edgeId} is already registered`);
    if ((e.user ?? `edge-${e.edgeId}`) === user)
      throw new ConfigError(`user ${user} is already taken by edge ${e.edgeId}`);
    if ((e.domain ?? e.edgeId) === domain)
      throw new ConfigError(`domain ${domain} is already taken by edge ${e.edgeId}`);
  }
  if (existsSync(secretPath)) throw new ConfigError(`${secretPath} exists; refusing to overwrite a secret`);
  let secret: string;
  let grant: EdgeGrant;
  if (auth === "nkey") {
    const kp = createUser();
    secret = new TextDecoder().decode(kp.getSeed());
    grant = { ...edge, domain, nkey: kp.getPublicKey() };
  } else {
    const s = newEdgeSecret();
    secret = s.secret;
    grant = { ...edge, user, domain, password: s.hash };
  }
  edgeLinkPermissions(grant, registry.hubDomain);
  writeFileSync(secretPath, secret + "\n", { mode: 0o600, flag: "wx" });
  return { ...registry, edges: [...registry.edges, grant] };
}

/** Removes an edge (its user disappears from the hub config on the next reload). */
export function revokeHubEdge(registry: HubEdgeRegistry, edgeId: string): HubEdgeRegistry {
  if (!registry.edges.some((e) => e.edgeId === edgeId)) throw new ConfigError(`edge ${edgeId} is not registered`);
  return { ...registry, edges: registry.edges.filter((e) => e.edgeId !== edgeId) };
}
