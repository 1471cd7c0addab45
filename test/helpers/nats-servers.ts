import { freePort, startOnFreePorts, waitFor } from "./processes.js";
import { spawn, type ChildProcess } from "node:child_process";
import { copyFileSync, mkdtempSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { connect as netConnect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { renderHubConfig, renderLeafConfig } from "../../src/events/nats-config.js";
import { startTcpProxy, type TcpProxy } from "./tcp-proxy.js";
import { addHubEdge, readHubEdgeRegistry, writeHubEdgeRegistry } from "../../src/events/hub-edges.js";

/** Path of the nats-server binary the integration tests use. */
export const NATS_SERVER_BIN = "/usr/sbin/nats-server";

async function canConnect(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const sock = netConnect({ host: "127.0.0.1", port });
    sock.once("connect", () => {
      sock.destroy();
      resolve(true);
    });
    sock.once("error", () => resolve(false));
  });
}

/** One nats-server process started from a rendered config. */
export interface NatsServerProcess {
  readonly name: string;
  readonly port: number;
  readonly url: string;
  readonly configPath: string;
  /** The current process id (changes on restart). */
  pid(): number | undefined;
  /** Starts (or restarts) the process and waits until its client port accepts connections. */
  start(): Promise<void>;
  /** SIGTERM, wait for exit. */
  stop(): Promise<void>;
  /** SIGKILL (kill -9) by pid, wait for exit. */
  kill9(): Promise<void>;
  /** SIGHUP, then waits until the server logs that it reloaded its configuration. */
  reload(): Promise<void>;
}

/** A nats-server process for `configPath`, ready once every port in readyPorts accepts connections. */
export function managed(
  name: string,
  port: number,
  configPath: string,
  readyPorts: number[],
  env?: Record<string, string>,
): NatsServerProcess {
  let child: ChildProcess | undefined;
  let exited: Promise<void> = Promise.resolve();
  let stderr = "";
  // "Reloaded server configuration" lines logged by the running process (a line may span chunks).
  let reloads = 0;
  let partial = "";
  const waitExit = async (signal: NodeJS.Signals): Promise<void> => {
    const c = child;
    if (!c || c.exitCode !== null || c.signalCode !== null) return;
    c.kill(signal);
    await Promise.race([exited, new Promise((r) => setTimeout(r, 15_000))]);
    if (c.exitCode === null && c.signalCode === null) c.kill("SIGKILL");
    await exited;
  };
  return {
    name,
    port,
    url: `nats://127.0.0.1:${port}`,
    configPath,
    pid: () => child?.pid,
    async start() {
      await waitExit("SIGTERM");
      stderr = "";
      reloads = 0;
      partial = "";
      const c = spawn(NATS_SERVER_BIN, ["-c", configPath], {
        stdio: ["ignore", "ignore", "pipe"],
        env: env ? { ...process.env, ...env } : process.env,
      });
      child = c;
      c.stderr.on("data", (d: Buffer) => {
        stderr = (stderr + d.toString()).slice(-4000);
        const lines = (partial + d.toString()).split("\n");
        partial = lines.pop() ?? "";
        reloads += lines.filter((l) => l.includes("Reloaded server configuration")).length;
      });
      exited = new Promise((resolve) => c.once("exit", () => resolve()));
      // A server that exits (e.g. its port was taken) fails the start at once instead of being
      // polled for 30 s; waitFor counts a throw from its check as "not yet".
      let listening = false;
      await Promise.race([
        waitFor(async () => {
          for (const p of readyPorts) if (!(await canConnect(p))) return false;
          return (listening = true);
        }, `${name} to listen`),
        exited.then(() => {
          if (!listening) throw new Error(`${name} exited with ${c.exitCode}: ${stderr}`);
        }),
      ]);
      if (c.exitCode !== null) throw new Error(`${name} exited with ${c.exitCode}: ${stderr}`);
    },
    stop: () => waitExit("SIGTERM"),
    kill9: () => waitExit("SIGKILL"),
    async reload() {
      const c = child;
      if (!c || c.exitCode !== null || c.signalCode !== null) throw new Error(`${name} is not running`);
      const before = reloads;
      c.kill("SIGHUP");
      await waitFor(() => reloads > before, `${name} to reload its configuration (${stderr.slice(-300)})`, 30_000, 50);
    },
  };
}

/**
 * With more than one edge on the hub's single shared account, a leaf's nops.* subjects would
 * reach the other edges' streams through the hub (each edge's NOPS_EVENTS listens on
 * nops.events.>). Per-edge accounts and permissions (issue 15 item 1) keep edges apart in
 * production; these tests keep them apart by denying the streams' subjects on the leafnode link,
 * across which only JetStream API and sourcing traffic (nops.deliver.*) then flows.
 */
const ISOLATED = JSON.stringify(["nops.events.>", "nops.dlq.>", "nops.fed.>", "nops.cmd.>"]);

function isolateEdge(leafConfig: string): string {
  return leafConfig.replace(
    'account: "KERNEL" }',
    `account: "KERNEL", deny_imports: ${ISOLATED}, deny_exports: ${ISOLATED} }`,
  );
}

const SHIPPED_DIR = fileURLToPath(new URL("../../nats/", import.meta.url));

/**
 * Registers one edge the way `nops-kernel hub add-edge` does (every tenant, may create its hub
 * stream, as the kernel's ensureHubStream default does) and copies the shipped hub.conf beside it.
 */
function shipEdgeUsers(dir: string, edgeId: string, hubDomain: string): { user: string; secret: string } {
  const registryPath = join(dir, "edges.json");
  const secretPath = join(dir, "edge.secret");
  const registry = addHubEdge(
    readHubEdgeRegistry(registryPath, hubDomain),
    { edgeId, tenants: ["*"], createHubStream: true },
    secretPath,
  );
  writeHubEdgeRegistry(registryPath, join(dir, "edge-users.conf"), registry);
  copyFileSync(join(SHIPPED_DIR, "hub.conf"), join(dir, "shipped-hub.conf"));
  return { user: `edge-${edgeId}`, secret: readFileSync(secretPath, "utf8").trim() };
}

/** A hub and one leaf connected to it, each with its own JetStream domain and store. */
export interface NatsTopology {
  readonly dir: string;
  readonly hub: NatsServerProcess;
  readonly leaf: NatsServerProcess;
  readonly edgeDomain: string;
  readonly hubDomain: string;
  readonly kernelUser: { user: string; pass: string };
  readonly hubUser: { user: string; pass: string };
  /**
   * With `proxied: true`: the test-owned TCP proxy the leaf's link to the hub runs through (the
   * leaf is then also isolated from other edges, see isolateEdge).
   */
  readonly link?: TcpProxy;
  /**
   * Starts another edge's leaf on the same hub (rendered config, same kernel user), its link
   * through the same TCP proxy as the first leaf's (`proxied: true` only): a cut cuts every edge.
   * destroy() stops it too.
   */
  addLeaf(edgeDomain: string): Promise<NatsServerProcess>;
  /** Stops both servers (SIGKILL if they do not exit) and removes the temp dir. */
  destroy(): Promise<void>;
}

/**
 * Renders hub + leaf configs into a temp dir on free ports and starts both (hub first).
 * With `shipped: true` the servers run the repository's nats/hub.conf and nats/leaf.conf,
 * their variables filled from the environment, instead of the rendered configs.
 */
export async function startNatsTopology(
  options: { edgeDomain?: string; startHub?: boolean; shipped?: boolean; proxied?: boolean } = {},
): Promise<NatsTopology> {
  return startOnFreePorts(3, (ports) => startNatsTopologyOn(options, ports as [number, number, number]));
}

async function startNatsTopologyOn(
  options: { edgeDomain?: string; startHub?: boolean; shipped?: boolean; proxied?: boolean },
  [hubPort, hubLeafPort, leafPort]: [number, number, number],
): Promise<NatsTopology> {
  const dir = mkdtempSync(join(tmpdir(), "nops-nats-"));
  const link = options.proxied ? await startTcpProxy(hubLeafPort) : undefined;
  const hubLeafUrl = `nats-leaf://edge:edge-secret@127.0.0.1:${link?.port ?? hubLeafPort}`;
  const edgeDomain = options.edgeDomain ?? "edge1";
  const hubDomain = "hub";
  const hubUser = { user: "hub-admin", pass: "hub-secret" };
  const kernelUser = { user: "kernel", pass: "kernel-secret" };
  mkdirSync(join(dir, "hub"), { recursive: true });
  mkdirSync(join(dir, "leaf"), { recursive: true });
  const hubConf = join(dir, "hub.conf");
  const leafConf = join(dir, "leaf.conf");
  writeFileSync(
    hubConf,
    renderHubConfig({
      serverName: "hub",
      port: hubPort,
      leafPort: hubLeafPort,
      domain: hubDomain,
      storeDir: join(dir, "hub"),
      user: hubUser.user,
      password: hubUser.pass,
      leafUser: "edge",
      leafPassword: "edge-secret",
    }).replace(
      `listen: "127.0.0.1:${hubLeafPort}"`,
      // Behind the proxy the hub advertises the proxy's address: a reconnecting leaf that learned
      // the hub's own address would otherwise go around the proxy (and around a cut).
      link
        ? `listen: "127.0.0.1:${hubLeafPort}"\n  advertise: "127.0.0.1:${link.port}"`
        : `listen: "127.0.0.1:${hubLeafPort}"`,
    ),
  );
  writeFileSync(
    leafConf,
    (options.proxied ? isolateEdge : (c: string) => c)(
      renderLeafConfig({
        serverName: `leaf-${edgeDomain}`,
        port: leafPort,
        domain: edgeDomain,
        storeDir: join(dir, "leaf"),
        user: kernelUser.user,
        password: kernelUser.pass,
        hubUrl: hubLeafUrl,
      }),
    ),
  );
  // The shipped hub.conf runs from a copy next to the edge-users.conf the hub tooling writes
  // (an include is resolved relative to the including file).
  const shippedEdge = options.shipped ? shipEdgeUsers(dir, edgeDomain, hubDomain) : undefined;
  const hub = options.shipped
    ? managed("hub", hubPort, join(dir, "shipped-hub.conf"), [hubPort, hubLeafPort], {
        NOPS_HUB_NAME: "hub",
        NOPS_HUB_PORT: String(hubPort),
        NOPS_HUB_LEAF_PORT: String(hubLeafPort),
        NOPS_HUB_DOMAIN: hubDomain,
        NOPS_JS_STORE_DIR: join(dir, "hub"),
        NOPS_HUB_USER: hubUser.user,
        NOPS_HUB_PASSWORD: hubUser.pass,
      })
    : managed("hub", hubPort, hubConf, [hubPort, hubLeafPort]);
  const leaf = options.shipped
    ? managed("leaf", leafPort, join(SHIPPED_DIR, "leaf.conf"), [leafPort], {
        NOPS_EDGE_NAME: `leaf-${edgeDomain}`,
        NOPS_NATS_PORT: String(leafPort),
        NOPS_EDGE_DOMAIN: edgeDomain,
        NOPS_JS_STORE_DIR: join(dir, "leaf"),
        NOPS_KERNEL_USER: kernelUser.user,
        NOPS_KERNEL_PASSWORD: kernelUser.pass,
        NOPS_HUB_LEAF_URLS: JSON.stringify([
          `nats-leaf://${shippedEdge?.user}:${shippedEdge?.secret}@127.0.0.1:${link?.port ?? hubLeafPort}`,
        ]),
      })
    : managed("leaf", leafPort, leafConf, [leafPort]);
  try {
    if (options.startHub !== false) await hub.start();
    await leaf.start();
  } catch (err) {
    await Promise.all([leaf.kill9(), hub.kill9(), link?.close()]);
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }
  const extra: NatsServerProcess[] = [];
  return {
    dir,
    hub,
    leaf,
    async addLeaf(domain) {
      if (!link) throw new Error("addLeaf needs a proxied topology");
      const extraLink = link;
      return startOnFreePorts(1, async ([port]) => {
        mkdirSync(join(dir, `leaf-${domain}`), { recursive: true });
        const conf = join(dir, `leaf-${domain}.conf`);
        writeFileSync(
          conf,
          isolateEdge(
            renderLeafConfig({
              serverName: `leaf-${domain}`,
              port: port!,
              domain,
              storeDir: join(dir, `leaf-${domain}`),
              user: kernelUser.user,
              password: kernelUser.pass,
              hubUrl: `nats-leaf://edge:edge-secret@127.0.0.1:${extraLink.port}`,
            }),
          ),
        );
        const extraLeaf = managed(`leaf-${domain}`, port!, conf, [port!]);
        try {
          await extraLeaf.start();
        } catch (err) {
          await extraLeaf.kill9();
          throw err;
        }
        extra.push(extraLeaf);
        return extraLeaf;
      });
    },
    edgeDomain,
    hubDomain,
    kernelUser,
    hubUser,
    link,
    async destroy() {
      await Promise.all([leaf.kill9(), hub.kill9(), link?.close(), ...extra.map((e) => e.kill9())]);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

export { freePort, waitFor };
