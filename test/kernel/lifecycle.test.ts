import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { connect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Writable } from "node:stream";
import test from "ava";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport } from "@connectrpc/connect-node";
import { AgentRegistryService } from "../../gen/nops/kernel/v1/agent_registry_pb.js";
import { resolveKernelOptions, startKernel, type KernelStage } from "../../src/kernel/index.js";
import { isRunning, parseProcessIdentity } from "../../src/common/process-identity.js";
import { createLifecycle } from "../../src/kernel/lifecycle.js";
import { createLogger } from "../../src/telemetry/logger.js";
import { freePort } from "../helpers/processes.js";

const quiet = new Writable({ write: (_c, _e, cb) => cb() });
const STAGES: KernelStage[] = ["database", "identity", "egress", "events", "routing", "listen"];

// Handles a failed start could leak: sockets, servers, child processes, timers that keep the loop alive.
function liveResources(): string[] {
  return process
    .getActiveResourcesInfo()
    .filter((r) => /TCP|Pipe|Process|Timeout|Interval|FSReqCallback|Signal/.test(r))
    .sort();
}

/**
 * liveResources() once no file-system request is in flight (up to 2 s): one still running when a snapshot
 * is taken (a previous test's file closing) ends on its own and is not a leaked handle.
 */
async function settledResources(): Promise<string[]> {
  for (let waited = 0; waited < 2000 && liveResources().includes("FSReqCallback"); waited += 20)
    await new Promise((r) => setTimeout(r, 20));
  return liveResources();
}

function portAccepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect({ host: "127.0.0.1", port });
    s.once("connect", () => {
      s.destroy();
      resolve(true);
    });
    s.once("error", () => resolve(false));
  });
}

test("lifecycle - closes newest first, once, and a failing closer does not stop the others", async (t) => {
  const order: string[] = [];
  const life = createLifecycle(createLogger({ level: "silent", redactPaths: [] }, quiet));
  life.defer("a", () => order.push("a"));
  life.defer("b", () => {
    throw new Error("b failed");
  });
  life.defer(
    "c",
    async () => order.push("c"),
    () => order.push("kill c"),
  );
  life.killNow();
  await Promise.all([life.close(), life.close()]);
  t.deepEqual(order, ["kill c", "c", "a"]);
  t.throws(() => life.defer("d", () => undefined), { message: /closing/ });
});

for (const failAt of STAGES) {
  test.serial(
    `startKernel - a start that fails after the ${failAt} stage leaves no handle, child or lock behind`,
    async (t) => {
      const dir = mkdtempSync(join(tmpdir(), "nops-start-fail-"));
      t.teardown(() => rmSync(dir, { recursive: true, force: true }));
      const [grpcPort, httpPort] = [await freePort(), await freePort()];
      const options = resolveKernelOptions({
        dataDir: dir,
        grpc: { host: "127.0.0.1", port: grpcPort },
        http: { host: "127.0.0.1", port: httpPort },
        identity: { source: "dev" },
        nats: { leaf: "auto" },
        shutdownGraceMs: 500,
      });
      await new Promise((r) => setTimeout(r, 100));
      const before = await settledResources();
      let leafPid: number | undefined;
      const error = await t.throwsAsync(
        startKernel(options, {
          logDestination: quiet,
          afterStage: (stage) => {
            if (existsSync(join(dir, "nats", "leaf.pid")))
              leafPid = parseProcessIdentity(readFileSync(join(dir, "nats", "leaf.pid"), "utf8"))?.pid;
            if (stage === failAt) throw new Error(`injected failure after ${stage}`);
          },
        }),
      );
      t.regex(error?.message ?? "", new RegExp(`after ${failAt}`));
      if (STAGES.indexOf(failAt) >= STAGES.indexOf("events")) t.truthy(leafPid, "the leaf had started");
      if (leafPid) t.false(isRunning({ pid: leafPid, start: "" }), "the leaf nats-server was stopped");
      t.false(existsSync(join(dir, "kernel.lock")), "the data dir lock was released");
      t.false(await portAccepts(grpcPort), "gRPC port closed");
      t.false(await portAccepts(httpPort), "HTTP port closed");
      // Let closed sockets' last callbacks run before comparing.
      await new Promise((r) => setTimeout(r, 100));
      t.deepEqual(await settledResources(), before);
      // And the data dir is usable again at once. On ports of its own: the ones above were free when picked,
      // and a process of another test file may have been given one of them since.
      const kernel = await startKernel(
        {
          ...options,
          grpc: { ...options.grpc, port: 0 },
          http: { ...options.http, port: 0 },
          nats: { ...options.nats, leaf: "off" },
        },
        { logDestination: quiet },
      );
      await kernel.stop();
    },
  );
}

test.serial("startKernel - a second kernel on the same data dir is refused while the first runs", async (t) => {
  const dir = mkdtempSync(join(tmpdir(), "nops-lock-"));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const options = resolveKernelOptions({
    dataDir: dir,
    grpc: { host: "127.0.0.1", port: 0 },
    http: { host: "127.0.0.1", port: 0 },
    identity: { source: "none" },
    nats: { leaf: "off" },
  });
  const first = await startKernel(options, { logDestination: quiet });
  await t.throwsAsync(startKernel(options, { logDestination: quiet }), { message: /in use by another kernel/ });
  await first.stop();
  const again = await startKernel(options, { logDestination: quiet });
  await again.stop();
});

test.serial(
  "shutdown - open WatchAgents streams end with UNAVAILABLE and a retry hint on both transports",
  async (t) => {
    const dir = mkdtempSync(join(tmpdir(), "nops-shutdown-"));
    t.teardown(() => rmSync(dir, { recursive: true, force: true }));
    const kernel = await startKernel(
      resolveKernelOptions({
        dataDir: dir,
        grpc: { host: "127.0.0.1", port: 0 },
        http: { host: "127.0.0.1", port: 0 },
        identity: { source: "none" },
        nats: { leaf: "off" },
        // Long enough that a stream held until the grace ends would fail the timing below.
        shutdownGraceMs: 20_000,
      }),
      { logDestination: quiet },
    );
    const clients = [
      createClient(AgentRegistryService, createGrpcTransport({ baseUrl: `http://127.0.0.1:${kernel.grpcPort}` })),
      createClient(
        AgentRegistryService,
        createConnectTransport({ baseUrl: `http://127.0.0.1:${kernel.httpPort}`, httpVersion: "1.1" }),
      ),
    ];
    const ended = clients.map(async (client) => {
      try {
        for await (const _change of client.watchAgents({ tenant: "acme" })) {
          // the current set (empty), then changes
        }
        return undefined;
      } catch (err) {
        return ConnectError.from(err);
      }
    });
    await new Promise((r) => setTimeout(r, 300));
    const started = Date.now();
    await kernel.stop();
    t.true(Date.now() - started < 5000, "stop did not wait for the grace period");
    for (const err of await Promise.all(ended)) {
      t.is(err?.code, Code.Unavailable);
      t.regex(err?.rawMessage ?? "", /shutting down/);
      t.is(err?.metadata.get("retry-after"), "1");
      t.is(err?.metadata.get("grpc-retry-pushback-ms"), "1000");
    }
  },
);
