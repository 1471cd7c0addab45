import { ConfigError } from "../common/index.js";

/** Values for a leaf node's config (same shape as nats/leaf.conf, whose `$VARS` these fill). */
export interface LeafConfigValues {
  /** Server name, e.g. "leaf-edge-eu-1". */
  serverName: string;
  /** Client port on 127.0.0.1 (0 = random, only useful with a ports file). */
  port: number;
  /** HTTP monitoring port on 127.0.0.1; omitted = no monitoring endpoint. */
  httpPort?: number;
  /** JetStream domain of this edge (one per edge). */
  domain: string;
  /** JetStream store directory. */
  storeDir: string;
  /** The kernel's user in the KERNEL account. */
  user: string;
  password: string;
  /** Leafnode remote URL of the hub, credentials included, e.g. "nats-leaf://edge:pw@hub:7422"; omitted = no hub. */
  hubUrl?: string;
}

/** Values for the hub's config (same shape as nats/hub.conf). */
export interface HubConfigValues {
  serverName: string;
  port: number;
  httpPort?: number;
  /** Port on 127.0.0.1 where edges' leaf nodes connect. */
  leafPort: number;
  /** JetStream domain of the hub. */
  domain: string;
  storeDir: string;
  /** User that clients of the EDGES account (operators, the hub's own readers) use. */
  user: string;
  password: string;
  /** Credentials edges' leaf nodes present; bound to the EDGES account. */
  leafUser: string;
  leafPassword: string;
}

const SAFE = /^[A-Za-z0-9_.:/@-]+$/;

function quoted(field: string, value: string): string {
  // NATS config strings are quoted; reject anything that could break out of the quotes.
  if (!SAFE.test(value))
    throw new ConfigError(`${field} contains characters not allowed in a NATS config: ${JSON.stringify(value)}`);
  return JSON.stringify(value);
}

// Both servers: name, loopback client port, JetStream in their domain, one account with one user.
function serverHead(
  v: {
    serverName: string;
    port: number;
    httpPort?: number;
    storeDir: string;
    domain: string;
    user: string;
    password: string;
  },
  account: string,
): string[] {
  return [
    `server_name: ${quoted("serverName", v.serverName)}`,
    `listen: "127.0.0.1:${v.port}"`,
    ...(v.httpPort !== undefined ? [`http: "127.0.0.1:${v.httpPort}"`] : []),
    `jetstream {`,
    `  store_dir: ${quoted("storeDir", v.storeDir)}`,
    `  domain: ${quoted("domain", v.domain)}`,
    `}`,
    `accounts {`,
    `  ${account} {`,
    `    jetstream: enabled`,
    `    users: [ { user: ${quoted("user", v.user)}, password: ${quoted("password", v.password)} } ]`,
    `  }`,
    `}`,
  ];
}

/** Renders a leaf node config: account KERNEL with JetStream in its own domain, one leafnode remote to the hub. */
export function renderLeafConfig(v: LeafConfigValues): string {
  const lines = serverHead(v, "KERNEL");
  if (v.hubUrl !== undefined) {
    lines.push(
      `leafnodes {`,
      `  reconnect: 1`,
      `  remotes: [ { urls: [ ${quoted("hubUrl", v.hubUrl)} ], account: "KERNEL" } ]`,
      `}`,
    );
  }
  return lines.join("\n") + "\n";
}

/** Renders the hub config: account EDGES with JetStream in the hub domain; edges' leaf nodes bind to EDGES. */
export function renderHubConfig(v: HubConfigValues): string {
  return (
    [
      ...serverHead(v, "EDGES"),
      `leafnodes {`,
      `  listen: "127.0.0.1:${v.leafPort}"`,
      `  authorization { user: ${quoted("leafUser", v.leafUser)}, password: ${quoted("leafPassword", v.leafPassword)}, account: "EDGES" }`,
      `}`,
    ].join("\n") + "\n"
  );
}
