import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { connect } from "@nats-io/transport-node";
import { jetstreamManager } from "@nats-io/jetstream";
import {
  hubEdgeStreamConfig,
  renderHubConfig,
  renderLeafConfig,
  type EdgeGrant,
} from "../../src/events/nats-config.js";
import { newEdgeSecret } from "../../src/events/edge-credentials.js";
import { managed, type NatsServerProcess } from "./nats-servers.js";
import { startOnFreePorts, waitFor } from "./processes.js";
import { startTcpProxy, type TcpProxy } from "./tcp-proxy.js";

/** One edge of a fleet: its leaf node, its own hub credentials and the proxies its link runs through. */
export interface FleetEdge {
  readonly edgeId: string;
  readonly tenants: readonly string[];
  readonly leaf: NatsServerProcess;
  /** The edge's hub user and plain secret (the hub config holds its bcrypt hash). */
  readonly user: string;
  readonly secret: string;
  /** One proxy per hub node between this edge's leaf and that node's leafnode port (none when `direct`). */
  readonly proxies: readonly TcpProxy[];
  /** Leafnode port of each hub node (direct, without the proxy). */
  readonly hubLeafPorts: readonly number[];
}

/** A hub (one node or a cluster) and several edges, each linked with its own identity. */
export interface EdgeFleet {
  readonly dir: string;
  readonly hubs: readonly NatsServerProcess[];
  readonly hubDomain: string;
  readonly hubUser: { user: string; pass: string };
  readonly kernelUser: { user: string; pass: string };
  readonly edges: Readonly<Record<string, FleetEdge>>;
  /** Client URLs of every hub node (for readers that fail over). */
  readonly hubUrls: string[];
  /** Creates each edge's hub stream with the hub tooling's config (replicas = hub nodes). */
  createHubStreams(): Promise<void>;
  /** Rewrites the hub config without this edge and reloads every hub node (SIGHUP). */
  revoke(edgeId: string): Promise<void>;
  destroy(): Promise<void>;
}

const HUB_DOMAIN = "hub";

/** How startEdgeFleet lays out the fleet. */
export interface EdgeFleetOptions {
  hubNodes: 1 | 3;
  edges: { edgeId: string; tenants: readonly string[]; createHubStream?: boolean }[];
  /**
   * Leaves connect straight to the hub nodes' leafnode ports, without the test-owned proxies (so
   * no cut; benches measure the links as deployed). @default false
   */
  direct?: boolean;
}

/**
 * Starts `hubNodes` hub nodes (a cluster when > 1) and one leaf per edge, each linked through
 * test-owned proxies (or directly with `direct`).
 */
export async function startEdgeFleet(options: EdgeFleetOptions): Promise<EdgeFleet> {
  const n = options.hubNodes;
  return startOnFreePorts(n * 3 + options.edges.length, (ports) => startOn(options, ports));
}

async function startOn(options: EdgeFleetOptions, ports: number[]): Promise<EdgeFleet> {
  const dir = mkdtempSync(join(tmpdir(), "nops-fleet-"));
  const n = options.hubNodes;
  const hubPorts = ports.slice(0, n);
  const leafPorts = ports.slice(n, 2 * n);
  const routePorts = ports.slice(2 * n, 3 * n);
  const edgePorts = ports.slice(3 * n);
  const hubUser = { user: "hub-admin", pass: "hub-secret" };
  const kernelUser = { user: "kernel", pass: "kernel-secret" };
  // A low bcrypt cost keeps the test's reconnect storms cheap; the tooling uses the default.
  const secrets = options.edges.map((e) => ({ ...e, user: `edge-${e.edgeId}`, ...newEdgeSecret(4) }));
  let grants: EdgeGrant[] = secrets.map((s) => ({
    edgeId: s.edgeId,
    tenants: s.tenants,
    password: s.hash,
    createHubStream: s.createHubStream === true,
  }));
  const hubConfPath = (i: number): string => join(dir, `hub-${i}.conf`);
  const writeHubConfs = (): void => {
    for (let i = 0; i < n; i++)
      writeFileSync(
        hubConfPath(i),
        renderHubConfig({
          serverName: `hub-${i}`,
          port: hubPorts[i]!,
          leafPort: leafPorts[i]!,
          domain: HUB_DOMAIN,
          storeDir: join(dir, `hub-${i}`),
          user: hubUser.user,
          password: hubUser.pass,
          edges: grants,
          // Edges reach the hub only through their own proxies (so a test can cut one edge):
          // each node advertises a closed port instead of its real leafnode address.
          ...(options.direct === true ? {} : { leafAdvertise: "127.0.0.1:1" }),
          ...(n > 1
            ? {
                cluster: {
                  name: "nops-hub",
                  port: routePorts[i]!,
                  routes: routePorts.map((p) => `nats-route://127.0.0.1:${p}`),
                },
              }
            : {}),
        }),
      );
  };
  const proxies: TcpProxy[] = [];
  const hubs: NatsServerProcess[] = [];
  const edges: Record<string, FleetEdge> = {};
  const destroy = async (): Promise<void> => {
    await Promise.all([...Object.values(edges).map((e) => e.leaf.kill9()), ...hubs.map((h) => h.kill9())]);
    await Promise.all(proxies.map((p) => p.close()));
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    for (let i = 0; i < n; i++) mkdirSync(join(dir, `hub-${i}`));
    writeHubConfs();
    for (let i = 0; i < n; i++)
      hubs.push(managed(`hub-${i}`, hubPorts[i]!, hubConfPath(i), [hubPorts[i]!, leafPorts[i]!]));
    await Promise.all(hubs.map((h) => h.start()));
    for (const [k, s] of secrets.entries()) {
      const own = options.direct === true ? [] : await Promise.all(leafPorts.map((p) => startTcpProxy(p)));
      proxies.push(...own);
      const linkPorts = options.direct === true ? leafPorts : own.map((p) => p.port);
      const conf = join(dir, `leaf-${s.edgeId}.conf`);
      mkdirSync(join(dir, `leaf-${s.edgeId}`));
      writeFileSync(
        conf,
        renderLeafConfig({
          serverName: `leaf-${s.edgeId}`,
          port: edgePorts[k]!,
          domain: s.edgeId,
          storeDir: join(dir, `leaf-${s.edgeId}`),
          user: kernelUser.user,
          password: kernelUser.pass,
          hubUrls: linkPorts.map((p) => `nats-leaf://${s.user}:${s.secret}@127.0.0.1:${p}`),
        }),
      );
      const leaf = managed(`leaf-${s.edgeId}`, edgePorts[k]!, conf, [edgePorts[k]!]);
      edges[s.edgeId] = {
        edgeId: s.edgeId,
        tenants: s.tenants,
        leaf,
        user: s.user,
        secret: s.secret,
        proxies: own,
        hubLeafPorts: leafPorts,
      };
      await leaf.start();
    }
  } catch (err) {
    await destroy();
    throw err;
  }
  const hubUrls = hubPorts.map((p) => `nats://127.0.0.1:${p}`);
  return {
    dir,
    hubs,
    hubDomain: HUB_DOMAIN,
    hubUser,
    kernelUser,
    edges,
    hubUrls,
    async createHubStreams() {
      const nc = await connect({ servers: hubUrls, user: hubUser.user, pass: hubUser.pass });
      try {
        // No API check here: a cluster that just started may not have elected its JetStream
        // meta leader yet; the adds below are retried until it has.
        const jsm = await jetstreamManager(nc, { timeout: 10_000, checkAPI: false });
        for (const s of secrets)
          await waitFor(
            async () => {
              await jsm.streams.add(
                hubEdgeStreamConfig({ edgeId: s.edgeId, replicas: n, duplicateWindowMs: 2 * 3600_000 }),
              );
              return true;
            },
            `hub stream of ${s.edgeId}`,
            60_000,
            500,
          );
      } finally {
        await nc.close();
      }
    },
    async revoke(edgeId) {
      grants = grants.filter((g) => g.edgeId !== edgeId);
      writeHubConfs();
      // Every running hub node has the new users before this returns.
      await Promise.all(hubs.filter((h) => h.pid() !== undefined).map((h) => h.reload()));
    },
    destroy,
  };
}
