import test from "ava";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { Code, ConnectError } from "@connectrpc/connect";
import { FederationService } from "../../gen/nops/federation/v1/federation_pb.js";
import { RoutingService } from "../../gen/nops/kernel/v1/routing_pb.js";
import { freePort, spawnChild, waitFor } from "../helpers/processes.js";
import { TEST_DGE_BUDGET } from "../helpers/kernel.js";
import type { EchoAgent } from "../routing/fixtures/echo-agent.js";
import { startFedKernel, eventually } from "./two-kernels.js";
import {
  developerClient,
  FAST_FEDERATION,
  getInsecure as get,
  handshake,
  startKernelAgent,
  type KernelAt,
} from "./fed-fixtures.js";

const CLI = fileURLToPath(new URL("../../src/cli.ts", import.meta.url));
const AGREEMENT = {
  inbound: { tenants: ["acme"], capabilities: ["*"] },
  outbound: { tenants: ["acme"], capabilities: ["*"] },
};

test("federation - kill -9 of a peer under load: no answered call lost, no non-idempotent call executed twice", async (t) => {
  const a = await startFedKernel("edge-a", "edge-a.test", FAST_FEDERATION);
  t.teardown(() => a.stop());
  // B is its own process, so that it can die by SIGKILL.
  const dir = mkdtempSync(join(tmpdir(), "nops-fed-kill-b-"));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const [grpcPort, httpPort] = [await freePort(), await freePort()];
  const config = join(dir, "b.json");
  writeFileSync(
    config,
    JSON.stringify({
      dataDir: join(dir, "data"),
      edgeId: "edge-b",
      trustDomain: "edge-b.test",
      grpc: { host: "127.0.0.1", port: grpcPort },
      http: { host: "127.0.0.1", port: httpPort },
      log: { level: "warn" },
      identity: { source: "dev" },
      nats: { leaf: "off" },
      admin: { overload: { enabled: false }, dependencies: { dge: TEST_DGE_BUDGET } },
      rateLimit: { ipLimit: 1_000_000 },
      ...FAST_FEDERATION,
    }),
  );
  const child = spawnChild(t, process.execPath, ["--import", "tsx", CLI, "serve", "--config", config], {});
  const b: KernelAt & { spiffeId: string; httpEndpoint: string } = {
    dir: join(dir, "data"),
    trustDomain: "edge-b.test",
    grpcEndpoint: `127.0.0.1:${grpcPort}`,
    httpEndpoint: `https://127.0.0.1:${httpPort}`,
    spiffeId: "spiffe://edge-b.test/nops/kernel/edge-b",
  };
  await waitFor(async () => (await get(`${b.httpEndpoint}/healthz`)).status === 200, "B to serve", 120_000);

  const bundleB = (await get(`${b.httpEndpoint}/federation/bundle`)).body;
  await a.client(FederationService, { kernel: a, transport: "grpc" }).addPeer({
    spiffeId: b.spiffeId,
    grpcEndpoint: b.grpcEndpoint,
    httpEndpoint: b.httpEndpoint,
    bundle: bundleB,
    agreement: AGREEMENT,
  });
  await developerClient(b, FederationService).addPeer({
    spiffeId: a.spiffeId,
    grpcEndpoint: a.grpcEndpoint,
    httpEndpoint: a.httpEndpoint,
    bundle: (await a.get("/federation/bundle")).body,
    agreement: AGREEMENT,
  });
  await handshake(a, { ...a, spiffeId: b.spiffeId });
  // The agent outlives B (it runs in this process): it counts every execution.
  const agent: EchoAgent = await startKernelAgent(b, "acme", "pay", "pay");
  t.teardown(() => agent.close());

  const routing = a.client(RoutingService, { kernel: a, transport: "grpc" });
  const invoke = (payload: string) =>
    routing.invoke(
      // Not idempotent: neither kernel may run it a second time.
      { tenant: "acme", capability: "pay", payload: new TextEncoder().encode(payload), idempotent: false },
      { timeoutMs: 10_000 },
    );
  await eventually(async () => ((await invoke("warm-up").catch(() => undefined)) ? true : undefined), "A to reach B");

  const answered = new Set<string>();
  const failed: { id: string; at: number; code: Code; message: string }[] = [];
  let next = 0;
  let killedAt = 0;
  let afterKill = 0;
  const worker = async () => {
    while (killedAt === 0 || afterKill < 40) {
      const id = `pay-${next++}`;
      const at = Date.now();
      try {
        await invoke(id);
        answered.add(id);
      } catch (err) {
        failed.push({ id, at, code: ConnectError.from(err).code, message: ConnectError.from(err).rawMessage });
      }
      if (killedAt !== 0 && at > killedAt) afterKill++;
    }
  };
  const workers = Array.from({ length: 4 }, () => worker());
  await eventually(() => (answered.size >= 40 ? true : undefined), "load before the kill");
  killedAt = Date.now();
  child.proc.kill("SIGKILL");
  await child.exited;
  await Promise.all(workers);

  const executions = new Map<string, number>();
  for (const p of agent.stats.payloads) executions.set(p, (executions.get(p) ?? 0) + 1);
  const twice = [...executions].filter(([, n]) => n > 1).map(([id]) => id);
  t.deepEqual(twice, [], "no call was executed twice");
  const lost = [...answered].filter((id) => executions.get(id) !== 1);
  t.deepEqual(lost, [], "every answered call was executed exactly once");
  // Calls started after the kill (those in flight at the kill may fail either way: none ran twice).
  const late = failed.filter((f) => f.at > killedAt);
  t.true(late.length > 0, "calls after the kill fail");
  t.deepEqual(
    late.filter((f) => f.code !== Code.Unavailable).map((f) => `${f.id}: ${Code[f.code]} ${f.message}`),
    [],
    "calls needing the dead peer fail with UNAVAILABLE",
  );
  t.log(`answered ${answered.size}, failed ${failed.length}, executions ${agent.stats.payloads.length}`);
});
