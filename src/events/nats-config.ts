import { ConfigError, EDGE_ID_PATTERN, TENANT_PATTERN } from "../common/index.js";

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
  /**
   * The edge's user nkey seed ("SU…") for the hub link instead of credentials in the URL
   * (nats-server >= 2.10.8).
   */
  hubNkeySeed?: string;
  /** Leafnode remote URL of the hub, credentials included, e.g. "nats-leaf://edge:pw@hub:7422"; omitted = no hub. */
  hubUrl?: string;
  /**
   * Every node of a clustered hub (leafnode URLs, credentials included); the leaf connects to one
   * and fails over to the next. Used instead of hubUrl.
   */
  hubUrls?: readonly string[];
}

/** One edge allowed on the hub's leafnode port, with its own user and permissions (see edgeLinkPermissions). */
export interface EdgeGrant {
  /** The edge id (the kernel's events.edgeId). */
  edgeId: string;
  /** JetStream domain of the edge's leaf node. @default edgeId */
  domain?: string;
  /** Leafnode user on the hub. @default "edge-<edgeId>" */
  user?: string;
  /**
   * Its password: a bcrypt hash ("$2a$…", what the hub tooling writes) or the plain secret.
   * Exactly one of password and nkey.
   */
  password?: string;
  /**
   * Its public user nkey ("U…") instead of a password: the edge's leaf remote signs with the seed
   * (`nkey:` in a leafnode remote needs nats-server >= 2.10.8 on the edge and the hub).
   */
  nkey?: string;
  /** Tenants the edge serves; its link may publish only their subjects. ["*"] = every tenant. */
  tenants: readonly string[];
  /** May the edge's kernel create its own hub stream (events.ensureHubStream)? @default false */
  createHubStream?: boolean;
}

/** The nats cluster block of one hub node. */
export interface HubClusterValues {
  /** Cluster name, the same on every node. */
  name: string;
  /** Route port of this node on 127.0.0.1 (tests) or the listen address's port. */
  port: number;
  /** Route URLs of every node ("nats-route://host:port"); a node's own URL is ignored by nats-server. */
  routes: readonly string[];
  /** Listen host. @default "127.0.0.1" */
  host?: string;
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
  /**
   * One shared leafnode user for every edge, bound to EDGES (single-tenant or development hubs).
   * Exclusive with `edges`.
   */
  leafUser?: string;
  leafPassword?: string;
  /** Per-edge leafnode users, each limited to its own subjects and domain. Exclusive with leafUser. */
  edges?: readonly EdgeGrant[];
  /** Set on every node of a clustered hub. */
  cluster?: HubClusterValues;
  /** Listen host of the client and leafnode ports. @default "127.0.0.1" */
  host?: string;
  /**
   * host:port this node tells connected edges to reconnect to (its public leafnode address).
   * nats-server always tells an edge its own leafnode address, whatever no_advertise says.
   * @default the listen address
   */
  leafAdvertise?: string;
}

const SAFE = /^[A-Za-z0-9_.:/@$*>-]+$/;
// Edge ids, JetStream domains and stream names follow the one rule for NATS names.
const NAME = EDGE_ID_PATTERN;

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
    host?: string;
  },
  account: string,
  extraUsers: readonly string[] = [],
): string[] {
  const host = v.host ?? "127.0.0.1";
  return [
    `server_name: ${quoted("serverName", v.serverName)}`,
    `listen: ${quoted("host", `${host}:${v.port}`)}`,
    ...(v.httpPort !== undefined ? [`http: "127.0.0.1:${v.httpPort}"`] : []),
    `jetstream {`,
    `  store_dir: ${quoted("storeDir", v.storeDir)}`,
    `  domain: ${quoted("domain", v.domain)}`,
    `}`,
    `accounts {`,
    `  ${account} {`,
    `    jetstream: enabled`,
    `    users: [`,
    `      { user: ${quoted("user", v.user)}, password: ${quoted("password", v.password)} }`,
    ...extraUsers,
    `    ]`,
    `  }`,
    `}`,
  ];
}

/** Renders a leaf node config: account KERNEL with JetStream in its own domain, one leafnode remote to the hub. */
export function renderLeafConfig(v: LeafConfigValues): string {
  const lines = serverHead(v, "KERNEL");
  const hubUrls = v.hubUrls ?? (v.hubUrl !== undefined ? [v.hubUrl] : []);
  if (v.hubUrls !== undefined && v.hubUrl !== undefined) throw new ConfigError("set hubUrl or hubUrls, not both");
  if (hubUrls.length > 0) {
    lines.push(
      `leafnodes {`,
      `  reconnect: 1`,
      `  remotes: [ { urls: [ ${hubUrls.map((u) => quoted("hubUrls", u)).join(", ")} ], account: "KERNEL"${
        v.hubNkeySeed !== undefined ? `, nkey: ${quoted("hubNkeySeed", v.hubNkeySeed)}` : ""
      } } ]`,
      `}`,
    );
  }
  return lines.join("\n") + "\n";
}

/** Subject prefix the hub's sourcing consumers on this edge's streams deliver to (edge -> hub). */
export function hubDeliverPrefix(edgeId: string): string {
  return `nops.deliver.hub.${edgeId}`;
}

/**
 * Subject prefix this edge's sourcing consumers on hub streams (NOPS_CMD, NOPS_FED) must deliver
 * to (hub -> edge): the `external.deliver` of the edge's NOPS_CMD_IN / NOPS_FED_IN sources.
 */
export function edgeDeliverPrefix(edgeId: string): string {
  return `nops.deliver.edge.${edgeId}`;
}

/** Inbox prefix of the edge kernel's NATS connection, so replies from the hub reach only this edge. */
export function edgeInboxPrefix(edgeId: string): string {
  return `_INBOX_${edgeId}`;
}

/** Name of the hub stream that sources an edge's NOPS_EVENTS (the kernel's default hubStreamName). */
export function hubEdgeStreamName(edgeId: string): string {
  return `NOPS_EDGE_${edgeId.toUpperCase().replace(/-/g, "_")}`;
}

/**
 * Config of the hub stream holding one edge's events: it sources the edge's NOPS_EVENTS through
 * the edge's JetStream domain, delivering on the edge's own prefix (the only one its link may
 * publish to). With exactly one tenant, the source is filtered to that tenant's subjects too.
 */
export function hubEdgeStreamConfig(init: {
  edgeId: string;
  edgeDomain?: string;
  streamName?: string;
  hubStreamName?: string;
  tenants?: readonly string[];
  replicas?: number;
  duplicateWindowMs: number;
}): {
  name: string;
  num_replicas: number;
  duplicate_window: number;
  sources: { name: string; filter_subject?: string; external: { api: string; deliver: string } }[];
} {
  const tenants = init.tenants ?? ["*"];
  const single = tenants.length === 1 && tenants[0] !== "*" ? tenants[0] : undefined;
  return {
    name: init.hubStreamName ?? hubEdgeStreamName(init.edgeId),
    num_replicas: init.replicas ?? 1,
    duplicate_window: init.duplicateWindowMs * 1_000_000,
    sources: [
      {
        name: init.streamName ?? "NOPS_EVENTS",
        ...(single !== undefined ? { filter_subject: `nops.events.${single}.>` } : {}),
        external: { api: `$JS.${init.edgeDomain ?? init.edgeId}.API`, deliver: hubDeliverPrefix(init.edgeId) },
      },
    ],
  };
}

/** Subjects one edge's leaf link may publish to the hub and receive from it (the edge's point of view). */
export interface EdgeLinkPermissions {
  publish: string[];
  subscribe: string[];
}

/**
 * What one edge's leafnode link may carry, from the edge's point of view (nats-server swaps
 * publish/subscribe for the hub side of a leaf connection):
 * - publish: its tenants' nops.events / nops.fed subjects; deliveries of the hub's sourcing
 *   consumers on its own prefix; replies to the hub's requests into its domain; on the hub's
 *   JetStream API the account INFO, its own hub stream's INFO and MSG.GET (hub confirmation reads
 *   the last sourced sequence) and CREATE/UPDATE if createHubStream, and
 *   consumer creation on NOPS_CMD / NOPS_FED filtered to its own edge id, plus the flow-control
 *   replies of those consumers;
 * - subscribe: its own domain's JetStream API; its own delivery prefix and inbox prefix; flow
 *   control of the hub's consumers on its streams; replies to its server's JetStream requests.
 * Nothing lets it reach another edge's domain ($JS.<other>.API), delivery prefix or tenants.
 */
export function edgeLinkPermissions(grant: EdgeGrant, hubDomain: string): EdgeLinkPermissions {
  const edgeId = grant.edgeId;
  if (!NAME.test(edgeId)) throw new ConfigError(`edge id must match ${NAME}: ${JSON.stringify(edgeId)}`);
  const domain = grant.domain ?? edgeId;
  if (!NAME.test(domain)) throw new ConfigError(`edge ${edgeId}: domain must match ${NAME}`);
  if (!NAME.test(hubDomain)) throw new ConfigError(`hub domain must match ${NAME}`);
  if ((grant.password === undefined) === (grant.nkey === undefined))
    throw new ConfigError(`edge ${edgeId}: set exactly one of password and nkey`);
  if (grant.nkey !== undefined && !/^U[A-Z2-7]{55}$/.test(grant.nkey))
    throw new ConfigError(`edge ${edgeId}: nkey must be a public user nkey (U followed by 55 base32 characters)`);
  if (grant.tenants.length === 0) throw new ConfigError(`edge ${edgeId}: tenants must list at least one tenant or "*"`);
  for (const t of grant.tenants)
    if (t !== "*" && !TENANT_PATTERN.test(t))
      throw new ConfigError(`edge ${edgeId}: tenant ${JSON.stringify(t)} must match ${TENANT_PATTERN} or be "*"`);
  const all = grant.tenants.includes("*");
  const tenants = all ? ["*"] : [...new Set(grant.tenants)].sort();
  const hubApi = `$JS.${hubDomain}.API`;
  const hubStream = hubEdgeStreamName(edgeId);
  return {
    publish: [
      ...(all
        ? ["nops.events.>", "nops.fed.*.>"]
        : tenants.flatMap((t) => [`nops.events.${t}.>`, `nops.fed.*.${t}.>`])),
      `${hubDeliverPrefix(edgeId)}.>`,
      "$JSC.R.>",
      `${hubApi}.INFO`,
      `${hubApi}.STREAM.INFO.${hubStream}`,
      `${hubApi}.STREAM.MSG.GET.${hubStream}`,
      ...(grant.createHubStream === true
        ? [`${hubApi}.STREAM.CREATE.${hubStream}`, `${hubApi}.STREAM.UPDATE.${hubStream}`]
        : []),
      `${hubApi}.CONSUMER.CREATE.NOPS_CMD.*.nops.cmd.${edgeId}.>`,
      `${hubApi}.CONSUMER.CREATE.NOPS_FED.*.nops.fed.${edgeId}.>`,
      "$JS.FC.NOPS_CMD.>",
      "$JS.FC.NOPS_FED.>",
    ],
    subscribe: [
      `$JS.${domain}.API.>`,
      `${edgeDeliverPrefix(edgeId)}.>`,
      `${edgeInboxPrefix(edgeId)}.>`,
      "$JS.FC.NOPS_EVENTS.>",
      "$JS.FC.NOPS_FED_OUT.>",
      "$JSC.R.>",
    ],
  };
}

function list(field: string, values: readonly string[]): string {
  return `[ ${values.map((x) => quoted(field, x)).join(", ")} ]`;
}

function edgeUser(grant: EdgeGrant, hubDomain: string): string {
  const p = edgeLinkPermissions(grant, hubDomain);
  return [
    grant.nkey !== undefined
      ? `      { nkey: ${quoted("edges.nkey", grant.nkey)},`
      : `      { user: ${quoted("edges.user", grant.user ?? `edge-${grant.edgeId}`)}, password: ${quoted("edges.password", grant.password ?? "")},`,
    `        allowed_connection_types: [ "LEAFNODE" ],`,
    `        permissions: { publish: { allow: ${list("publish", p.publish)} }, subscribe: { allow: ${list("subscribe", p.subscribe)} } } }`,
  ].join("\n");
}

/**
 * Renders the hub config: account EDGES with JetStream in the hub domain; edges' leaf nodes bind
 * to EDGES, either all with one shared user (leafUser) or each with its own user and permissions
 * (edges). With `cluster`, the node joins a hub cluster (JetStream replicated across its nodes).
 */
export function renderHubConfig(v: HubConfigValues): string {
  const shared = v.leafUser !== undefined || v.leafPassword !== undefined;
  if (shared && v.edges !== undefined) throw new ConfigError("set leafUser/leafPassword or edges, not both");
  if (shared && (v.leafUser === undefined || v.leafPassword === undefined))
    throw new ConfigError("leafUser and leafPassword go together");
  if (!shared && v.edges === undefined) throw new ConfigError("set edges (per-edge users) or leafUser/leafPassword");
  const seen = new Set<string>();
  for (const e of v.edges ?? []) {
    const user = e.user ?? `edge-${e.edgeId}`;
    if (seen.has(user) || user === v.user) throw new ConfigError(`edges: user ${JSON.stringify(user)} appears twice`);
    seen.add(user);
  }
  const host = v.host ?? "127.0.0.1";
  const lines = serverHead(v, "EDGES", edgeUsersOf(v));
  if (v.cluster !== undefined) {
    const c = v.cluster;
    lines.push(
      `cluster {`,
      `  name: ${quoted("cluster.name", c.name)}`,
      `  listen: ${quoted("cluster.listen", `${c.host ?? "127.0.0.1"}:${c.port}`)}`,
      `  routes: ${list("cluster.routes", c.routes)}`,
      `}`,
    );
  }
  // no_advertise: edges are not told the other nodes' leafnode addresses (they list every node
  // themselves); the node's own address still is, which leafAdvertise can set.
  lines.push(`leafnodes {`, `  listen: ${quoted("leafnodes.listen", `${host}:${v.leafPort}`)}`, `  no_advertise: true`);
  if (v.leafAdvertise !== undefined) lines.push(`  advertise: ${quoted("leafAdvertise", v.leafAdvertise)}`);
  if (shared)
    lines.push(
      `  authorization { user: ${quoted("leafUser", v.leafUser ?? "")}, password: ${quoted("leafPassword", v.leafPassword ?? "")}, account: "EDGES" }`,
    );
  // Per-edge users live in EDGES (allowed only as leaf connections); without an authorization
  // block here, nats-server authenticates leaf connections against them and applies their permissions.
  lines.push(`}`);
  return lines.join("\n") + "\n";
}

function edgeUsersOf(v: HubConfigValues): string[] {
  return (v.edges ?? []).map((e) => edgeUser(e, v.domain));
}

/**
 * The `users` list of the hub's EDGES account for nats/hub.conf's `include "edge-users.conf"`:
 * the operators' user (from $NOPS_HUB_USER / $NOPS_HUB_PASSWORD) and one user per edge.
 */
export function renderEdgeUsersInclude(edges: readonly EdgeGrant[], hubDomain: string): string {
  return (
    [
      "# Generated by `nops-kernel hub add-edge|revoke-edge`; included by nats/hub.conf. Do not edit.",
      "users: [",
      "      { user: $NOPS_HUB_USER, password: $NOPS_HUB_PASSWORD }",
      ...edges.map((e) => edgeUser(e, hubDomain)),
      "]",
    ].join("\n") + "\n"
  );
}
