import test from "ava";
import { ConnectError, Code } from "@connectrpc/connect";
import { AdminService, CapabilityMode } from "../../gen/nops/kernel/v1/admin_pb.js";
import { RoutingService } from "../../gen/nops/kernel/v1/routing_pb.js";
import type { EchoAgent } from "../routing/fixtures/echo-agent.js";
import { startTcpProxy, type TcpProxy } from "../helpers/tcp-proxy.js";
import { startFedKernel, eventually, type FedKernel } from "./two-kernels.js";
import { FAST_FEDERATION, handshake, pinPeer, startKernelAgent } from "./fed-fixtures.js";

// The partition: a test-owned TCP proxy between the kernels cuts B off for 30 s under light load.
const CUT_MS = 30_000;
const AGREEMENT = {
  inbound: { tenants: ["acme"], capabilities: ["*"] },
  outbound: { tenants: ["acme"], capabilities: ["*"] },
};

let a: FedKernel;
let b: FedKernel;
let proxy: TcpProxy;
const agents: EchoAgent[] = [];

test.before(async () => {
  a = await startFedKernel("edge-a", "edge-a.test", FAST_FEDERATION);
  b = await startFedKernel("edge-b", "edge-b.test", FAST_FEDERATION);
  proxy = await startTcpProxy(Number(b.grpcEndpoint.slice(b.grpcEndpoint.lastIndexOf(":") + 1)));
  // A reaches B's gRPC port only through the proxy.
  await pinPeer(a, b, AGREEMENT, `127.0.0.1:${proxy.port}`);
  await pinPeer(b, a, AGREEMENT);
  await handshake(a, b);
  agents.push(await startKernelAgent(b, "acme", "remote", "remote"));
  agents.push(await startKernelAgent(a, "acme", "local", "local"));
});

test.after.always(async () => {
  await Promise.all([a?.stop(), b?.stop()]);
  await Promise.all([proxy?.close(), ...agents.map((x) => x.close())]);
});

interface Outcome {
  kind: "local" | "remote";
  at: number;
  ms: number;
  code?: Code;
  message?: string;
}

test.serial(
  "federation - partition: local calls keep succeeding, remote ones fail fast, remote calls return after the heal without restart",
  async (t) => {
    const routing = a.client(RoutingService, { kernel: a, transport: "grpc" });
    const status = a.client(AdminService, { kernel: a, transport: "grpc" });
    const federationMode = async () => (await status.getStatus({})).capabilities.find((c) => c.name === "federation");
    const call = async (kind: "local" | "remote"): Promise<Outcome> => {
      const started = Date.now();
      try {
        await routing.invoke({ tenant: "acme", capability: kind, payload: new Uint8Array([1]) }, { timeoutMs: 20_000 });
        return { kind, at: started, ms: Date.now() - started };
      } catch (err) {
        const e = ConnectError.from(err);
        return { kind, at: started, ms: Date.now() - started, code: e.code, message: e.rawMessage };
      }
    };
    await eventually(async () => ((await call("remote")).code === undefined ? true : undefined), "a first remote call");

    // Light load: one local and one remote call at a time, back to back with a short pause.
    const outcomes: Outcome[] = [];
    let running = true;
    t.teardown(() => {
      running = false;
    });
    const load = (async () => {
      while (running) {
        outcomes.push(...(await Promise.all([call("local"), call("remote")])));
        await new Promise((r) => setTimeout(r, 100));
      }
    })();

    await eventually(() => (outcomes.length >= 10 ? true : undefined), "traffic before the cut");
    const cutAt = Date.now();
    proxy.cut();
    const degraded = await eventually(async () => {
      const f = await federationMode();
      return f?.mode === CapabilityMode.DEGRADED ? f : undefined;
    }, "the federation capability to be degraded");
    t.regex(degraded.reason, /federation-links/);
    t.regex(degraded.reason, /edge-b/);
    await new Promise((r) => setTimeout(r, Math.max(0, CUT_MS - (Date.now() - cutAt))));
    const healAt = Date.now();
    proxy.heal();
    const recovered = await eventually(
      () => outcomes.find((o) => o.kind === "remote" && o.at >= healAt && o.code === undefined),
      "a remote call to succeed after the heal",
    );
    await eventually(
      async () => ((await federationMode())?.mode === CapabilityMode.NORMAL ? true : undefined),
      "federation back to normal",
    );
    running = false;
    await load;

    const local = outcomes.filter((o) => o.kind === "local");
    t.deepEqual(
      local.filter((o) => o.code !== undefined).map((o) => o.message),
      [],
      "every local call succeeded, before, during and after the cut",
    );
    // Calls started while B was cut off (after the in-flight ones settled) failed fast with a reason.
    const duringCut = outcomes.filter((o) => o.kind === "remote" && o.at >= cutAt + 2000 && o.at + o.ms < healAt);
    t.true(duringCut.length >= 10, `remote calls during the cut: ${duringCut.length}`);
    t.deepEqual(
      duringCut.filter((o) => o.code !== Code.Unavailable).map((o) => `${o.code}: ${o.message}`),
      [],
      "every remote call during the cut was UNAVAILABLE",
    );
    t.true(
      duringCut.every((o) => /edge-b/.test(o.message ?? "")),
      "the reason names the peer",
    );
    // Fast: far below the 20 s deadline the caller gave (no call waited for the partition to end).
    const slowest = Math.max(...duringCut.map((o) => o.ms));
    t.true(slowest < 5000, `slowest failed remote call during the cut: ${slowest} ms`);
    const recoveryMs = recovered.at + recovered.ms - healAt;
    t.log(
      `local calls ${local.length}, remote during cut ${duringCut.length}, slowest ${slowest} ms, recovery ${recoveryMs} ms`,
    );
    t.true(recoveryMs <= 5000, `remote calls succeeded again ${recoveryMs} ms after the heal`);
  },
);
