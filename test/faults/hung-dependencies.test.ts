// A dependency that accepts connections but never answers (its real process SIGSTOPped), under a
// modest load against a whole kernel: after the first two seconds it adds under 50 ms to the p99 of
// every RPC, readiness and GetStatus name it, and the kernel recovers on SIGCONT without a restart.
import "reflect-metadata";
import test, { type ExecutionContext } from "ava";
import { Code, ConnectError } from "@connectrpc/connect";
import { AgentRegistryService } from "../../gen/nops/kernel/v1/agent_registry_pb.js";
import { RoutingService } from "../../gen/nops/kernel/v1/routing_pb.js";
import { EventBusService } from "../../gen/nops/kernel/v1/event_bus_pb.js";
import { AdminService, CapabilityMode, DependencyState } from "../../gen/nops/kernel/v1/admin_pb.js";
import { startTestKernel, type TestKernel } from "../helpers/kernel.js";
import { waitFor } from "../helpers/processes.js";
import { startRedisServer } from "../helpers/redis-server.js";
import { startNatsTopology } from "../helpers/nats-servers.js";
import { DGE_KEYS, spawnDge } from "../fixtures/dge-helpers.js";
import { DEFAULT_DGE_BREAKER } from "../../src/clients/dge-client.js";
import { logged, metric, modeEvents, readyz } from "./symptoms.js";
import { spawnEchoAgent } from "../routing/fixtures/spawn-echo-agent.js";

// The load comes from loopback for one tenant; the default per-IP and tier-1 limits would refuse it.
const LOOPBACK = { rateLimit: { ipOverrides: { "127.0.0.1": 1_000_000 }, defaultTier: 3 } };
/** Added p99 allowed once the fault is two seconds old. */
const ADDED_P99_MS = 50;
const SETTLE_MS = 2000;

interface Sample {
  /** ms since the fault began (negative: before it). */
  at: number;
  ms: number;
  code: Code | undefined;
  rpc: string;
}

/**
 * Runs `workers` loops of `rpcs` (round robin) for `durationMs`, each loop pausing `pauseMs`
 * between calls, at most `maxCalls` calls in all: a few hundred calls, measured from the client.
 */
async function load(
  rpcs: Record<string, () => Promise<unknown>>,
  origin: number,
  opts: { durationMs: number; workers?: number; pauseMs?: number; maxCalls?: number },
): Promise<Sample[]> {
  const samples: Sample[] = [];
  const names = Object.keys(rpcs);
  const end = performance.now() + opts.durationMs;
  const max = opts.maxCalls ?? 600;
  let n = 0;
  const worker = async (): Promise<void> => {
    while (performance.now() < end && n < max) {
      const rpc = names[n++ % names.length]!;
      const started = performance.now();
      let code: Code | undefined;
      try {
        await rpcs[rpc]!();
      } catch (err) {
        code = ConnectError.from(err).code;
      }
      samples.push({ at: started - origin, ms: performance.now() - started, code, rpc });
      await new Promise((r) => setTimeout(r, opts.pauseMs ?? 10));
    }
  };
  await Promise.all(Array.from({ length: opts.workers ?? 3 }, worker));
  return samples;
}

function p99(samples: Sample[]): number {
  const sorted = samples.map((s) => s.ms).sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.ceil(sorted.length * 0.99) - 1)] ?? 0;
}

/** Warms the path up (JIT, connections, caches), then measures the baseline. */
async function baselineOf(rpcs: Record<string, () => Promise<unknown>>, workers = 3): Promise<Sample[]> {
  await load(rpcs, performance.now(), { durationMs: 500, maxCalls: 100, workers });
  return load(rpcs, performance.now(), { durationMs: 1500, workers });
}

/** Per RPC: the added p99 of calls started after SETTLE_MS of fault, over the baseline. */
function addedP99(t: ExecutionContext, baseline: Sample[], fault: Sample[]): Map<string, number> {
  const added = new Map<string, number>();
  for (const rpc of new Set(baseline.map((s) => s.rpc))) {
    const before = baseline.filter((s) => s.rpc === rpc);
    const after = fault.filter((s) => s.rpc === rpc && s.at >= SETTLE_MS);
    t.true(after.length >= 40, `${rpc}: enough calls measured after the fault settled (${after.length})`);
    added.set(rpc, p99(after) - p99(before));
    t.log(`${rpc}: p99 ${p99(before).toFixed(1)} ms -> ${p99(after).toFixed(1)} ms (${after.length} calls)`);
  }
  return added;
}

/** One dependency fault (see faultRounds). */
interface FaultPlan {
  pid: () => number;
  rpcs: Record<string, () => Promise<unknown>>;
  workers?: number;
  durationMs?: number;
  /** Checks of the calls made before the fault. */
  healthy?: (baseline: Sample[]) => void;
  /** While frozen, after the load: what readiness, GetStatus, metrics, logs and events say. */
  reported: () => Promise<void>;
  /** Non-timing checks of the calls made during the fault (served, failed closed, ...). */
  served: (fault: Sample[]) => void;
  /** After SIGCONT: waits until the kernel reports the dependency recovered. */
  recovered: () => Promise<void>;
}

const ROUNDS = 3;

/**
 * Baseline, freeze, load, report, resume, recover. Every round asserts everything except the p99
 * bound, which must hold in one of ROUNDS rounds: the machine is shared (load averages above 10 on
 * 2 cores), so one descheduled stretch can spoil a round's tail, while a kernel that waits on the
 * hung dependency adds its budget (100 ms to 1 s) to every call and fails every round.
 */
async function faultRounds(t: ExecutionContext, plan: FaultPlan): Promise<void> {
  const failures: string[] = [];
  for (let round = 1; round <= ROUNDS; round++) {
    const baseline = await baselineOf(plan.rpcs, plan.workers);
    plan.healthy?.(baseline);
    const origin = performance.now();
    const resume = freeze(t, plan.pid());
    let fault: Sample[];
    try {
      fault = await load(plan.rpcs, origin, { durationMs: plan.durationMs ?? 4500, workers: plan.workers });
      await plan.reported();
    } finally {
      resume();
    }
    plan.served(fault);
    const over = [...addedP99(t, baseline, fault)].filter(([, ms]) => ms >= ADDED_P99_MS);
    await plan.recovered();
    if (over.length === 0) return;
    failures.push(`round ${round}: ${over.map(([rpc, ms]) => `${rpc} +${ms.toFixed(1)} ms`).join(", ")}`);
    t.log(failures.at(-1));
  }
  t.fail(`added p99 must stay under ${ADDED_P99_MS} ms per RPC: ${failures.join("; ")}`);
}

/** SIGSTOPs `pid`; SIGCONT is guaranteed by the returned resume (idempotent) and by teardown. */
function freeze(t: ExecutionContext, pid: number): () => void {
  let frozen = true;
  const resume = (): void => {
    if (!frozen) return;
    frozen = false;
    try {
      process.kill(pid, "SIGCONT");
    } catch {
      // already gone
    }
  };
  // Registered after the kernel and the process: teardowns run last-in first-out, so the process
  // is running again before the kernel stops (a frozen leaf would hang its drain) and before it is killed.
  t.teardown(resume);
  process.kill(pid, "SIGSTOP");
  return resume;
}

async function status(k: TestKernel) {
  return k.client(AdminService, "connect-json").getStatus({});
}

/**
 * The symptoms docs/runbooks/dependency-hung.md lists: readiness and GetStatus name the dependency
 * as down, "not answering"; its circuit is open and refusing calls; the log says so; the
 * capability's degraded.mode.activated.v1 is recorded.
 */
async function assertReported(
  t: ExecutionContext,
  k: TestKernel,
  dependency: string,
  capability: string,
  breaker: string,
  shed: boolean,
) {
  const r = await readyz(k);
  t.is(r.code, 200, "an ESSENTIAL dependency or the fail-closed guard never takes the kernel out of service");
  t.is(r.body.status, "degraded");
  const dep = r.body.dependencies.find((d) => d.name === dependency);
  t.is(dep?.state, "down");
  t.regex(dep?.detail ?? "", /not answering/);
  const s = await status(k);
  t.is(s.dependencies.find((d) => d.name === dependency)?.state, DependencyState.DOWN);
  t.not(s.capabilities.find((c) => c.name === capability)?.mode, CapabilityMode.NORMAL);
  t.is(await metric(k, "nops_dependency_state", { dependency }), 2);
  // 2 open, or 1 while the background probe is testing it (the test call waits up to one budget).
  t.true(((await metric(k, "nops_dependency_circuit_state", { dependency: breaker })) ?? 0) >= 1);
  t.true(
    ((await metric(k, "nops_dependency_call_failures_total", { dependency: breaker, outcome: "timeout" })) ?? 0) >= 1,
  );
  if (shed)
    t.true(
      ((await metric(k, "nops_dependency_call_failures_total", { dependency: breaker, outcome: "shed" })) ?? 0) >= 10,
      "calls refused at once while the circuit is open",
    );
  t.true(
    logged(k, "dependency not answering: circuit open, callers use their fallback").some(
      (l) => l.dependency === breaker,
    ),
  );
  await waitFor(
    () => modeEvents(k).some((e) => e.type === "activated" && e.capability === capability),
    `degraded.mode.activated.v1 {${capability}}`,
    5000,
  );
}

async function waitRecovered(k: TestKernel, dependency: string, capability: string) {
  await waitFor(
    async () => {
      const s = await status(k);
      return (
        s.dependencies.find((d) => d.name === dependency)?.state === DependencyState.OK &&
        s.capabilities.find((c) => c.name === capability)?.mode === CapabilityMode.NORMAL
      );
    },
    `${dependency} recovered`,
    30_000,
  );
}

const agent = { tenant: "acme", name: "a", version: "1", endpoint: "grpc://agent.acme.svc:7000" };

test.serial("hung redis - limits fall back to memory within the budget, readiness names it, recovers", async (t) => {
  const redis = await startRedisServer();
  t.teardown(() => redis.kill());
  const k = await startTestKernel(t, {
    ...LOOPBACK,
    log: { level: "info" },
    redis: { url: `redis://127.0.0.1:${redis.port}` },
  });
  await waitRecovered(k, "redis", "rate-limit");
  const registry = k.client(AgentRegistryService, "grpc-js");
  const id = (await registry.registerAgent(agent)).agent?.id ?? "";
  let limit: string | null = null;
  const rpcs = {
    listAgents: () => registry.listAgents({ tenant: "acme" }),
    heartbeat: () =>
      registry.heartbeat({ id, tenant: "acme" }, { onHeader: (h) => (limit = h.get("x-ratelimit-limit")) }),
  };
  await faultRounds(t, {
    pid: () => redis.pid,
    rpcs,
    reported: () => assertReported(t, k, "redis", "rate-limit", "redis", true),
    served(fault) {
      t.deepEqual(
        fault.filter((s) => s.code !== undefined).map((s) => s.code),
        [],
        "every call still served",
      );
      t.truthy(limit, "limits are still enforced, in memory");
    },
    recovered: () => waitRecovered(k, "redis", "rate-limit"),
  });
});

test.serial("hung dge - egress fails closed at once (dge_timeout), the rest serves, recovers", async (t) => {
  const dge = await spawnDge(t);
  const echo = await spawnEchoAgent({ name: "echo-hung" });
  t.teardown(() => echo.kill());
  const k = await startTestKernel(t, {
    ...LOOPBACK,
    log: { level: "info" },
    dge: { url: dge.url, keys: DGE_KEYS },
    egress: { tenantTiers: { acme: 1 } },
    // The production budget, not the test kernels' longer one: the point is what a hung DGE costs.
    admin: { dependencies: { dge: DEFAULT_DGE_BREAKER } },
  });
  const registry = k.client(AgentRegistryService, "grpc-js");
  const routing = k.client(RoutingService, "grpc-js");
  await registry.registerAgent({ ...agent, endpoint: echo.endpoint, capabilities: [{ name: "echo" }] });
  await waitRecovered(k, "dge", "egress-guard");
  let n = 0;
  // A fresh payload each call, so no cached verdict can answer: every call needs the DGE.
  const invoke = () =>
    routing.invoke({ tenant: "acme", capability: "echo", payload: new TextEncoder().encode(`{"op":"p${n++}"}`) });
  const rpcs = { invoke, listAgents: () => registry.listAgents({ tenant: "acme" }) };
  await faultRounds(t, {
    pid: () => dge.child.pid!,
    rpcs,
    // Two workers: each refusal is an audited, fsync'd egress.blocked.v1 write (the guard's
    // record), which on a shared disk is the fault path's own cost, not the DGE's.
    workers: 2,
    durationMs: 5500,
    healthy(baseline) {
      t.deepEqual(
        baseline.filter((s) => s.code !== undefined).map((s) => s.code),
        [],
        "all allowed before the fault",
      );
    },
    async reported() {
      await assertReported(t, k, "dge", "egress-guard", "dge", true);
      const err = await t.throwsAsync(invoke());
      t.is(ConnectError.from(err).code, Code.PermissionDenied, "no verdict is still a block");
      t.regex(ConnectError.from(err).rawMessage, /dge_timeout/);
    },
    served(fault) {
      const settled = fault.filter((s) => s.at >= SETTLE_MS);
      t.true(
        settled.filter((s) => s.rpc === "invoke").every((s) => s.code === Code.PermissionDenied),
        "egress fails closed",
      );
      t.true(
        settled.filter((s) => s.rpc === "listAgents").every((s) => s.code === undefined),
        "the registry serves",
      );
    },
    recovered: () => waitRecovered(k, "dge", "egress-guard"),
  });
  const ok = await routing.invoke({
    tenant: "acme",
    capability: "echo",
    payload: new TextEncoder().encode('{"op":"after"}'),
  });
  t.is(new TextDecoder().decode(ok.payload), '{"op":"after"}');
});

test.serial(
  "hung nats leaf - Publish is acked by the outbox, readiness names the leaf, the outbox drains after",
  async (t) => {
    const topo = await startNatsTopology({ edgeDomain: "edge-hung" });
    t.teardown(() => topo.destroy());
    const k = await startTestKernel(t, {
      ...LOOPBACK,
      log: { level: "info" },
      edgeId: "edge-hung",
      nats: { url: topo.leaf.url },
      events: { natsUser: topo.kernelUser.user, natsPassword: topo.kernelUser.pass, edgeDomain: topo.edgeDomain },
      egress: { tenantTiers: { acme: 1 } },
    });
    await waitRecovered(k, "nats-leaf", "event-bus");
    const bus = k.client(EventBusService, "grpc-js");
    const registry = k.client(AgentRegistryService, "grpc-js");
    const acked: string[] = [];
    let n = 0;
    const rpcs = {
      publish: async () => {
        const r = await bus.publish({
          tenant: "acme",
          subject: "jobs.done",
          payload: new TextEncoder().encode(`{"n":${n++}}`),
        });
        acked.push(r.eventId);
      },
      listAgents: () => registry.listAgents({ tenant: "acme" }),
    };
    await faultRounds(t, {
      pid: () => topo.leaf.pid()!,
      rpcs,
      reported: () => assertReported(t, k, "nats-leaf", "event-bus", "nats", false),
      served(fault) {
        t.deepEqual(
          fault.filter((s) => s.code !== undefined).map((s) => s.code),
          [],
          "every Publish acknowledged",
        );
      },
      recovered: () => waitRecovered(k, "nats-leaf", "event-bus"),
    });
    await waitFor(
      async () => {
        const Database = (await import("better-sqlite3")).default;
        const db = new Database(k.kernel.options.databasePath, { readonly: true });
        try {
          const row = db
            .prepare("SELECT count(*) AS n FROM outbox WHERE type = 'jobs.done' AND published_at IS NULL")
            .get() as { n: number };
          return row.n === 0;
        } finally {
          db.close();
        }
      },
      "outbox drained",
      30_000,
    );
    t.true(acked.length > 100);
  },
);
