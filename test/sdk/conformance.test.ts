import "reflect-metadata";
import { rmSync } from "node:fs";
import test from "ava";
import { Code, ConnectError } from "@connectrpc/connect";
import { AgentRegistryService, AgentStatus } from "../../gen/nops/kernel/v1/agent_registry_pb.js";
import { ApiKeyService, Role } from "../../gen/nops/kernel/v1/api_key_pb.js";
import { RoutingService } from "../../gen/nops/kernel/v1/routing_pb.js";
import { waitFor } from "../helpers/processes.js";
import { createKernelProcess } from "./kernel-process.js";
import { startAgentProcess } from "./agent-process.js";
import { LAUNCHERS, tempDataDir } from "./launchers.js";

const TENANT = "conformance";
const NAME = "conformance-agent";
const TTL_MS = 1500;
const text = (b: Uint8Array) => new TextDecoder().decode(b);

for (const launcher of LAUNCHERS) {
  test.serial(
    `sdk conformance (${launcher.language}) - register, heartbeat, invoke, restart, rotate, drain`,
    async (t) => {
      t.timeout(180_000);
      const launch = await launcher.prepare(t);
      const dataDir = tempDataDir();
      t.teardown(() => rmSync(dataDir, { recursive: true, force: true }));
      // Tier 3 (5000 requests/s): the load must measure the key rotation, not the default tier's 100/s quota.
      const kernel = await createKernelProcess(
        t,
        dataDir,
        { NOPS_REGISTRY_HEARTBEAT_TTL_MS: String(TTL_MS), NOPS_REGISTRY_ZOMBIE_AFTER_MS: "10000" },
        { rateLimit: { tenantTiers: { [TENANT]: 3 } } },
      );
      await kernel.start();
      const registry = kernel.admin(AgentRegistryService);
      const routing = kernel.admin(RoutingService);
      const keys = kernel.admin(ApiKeyService);
      const mine = async () => (await registry.listAgents({ tenant: TENANT })).agents.filter((a) => a.name === NAME);

      // An AGENT key bound to the agent's name: the least privilege the SDK must work with.
      const key = await keys.createApiKey({ tenant: TENANT, agentId: NAME, name: "conformance", role: Role.AGENT });
      const agent = startAgentProcess(t, launch, {
        NOPS_KERNEL_URL: `https://localhost:${kernel.httpPort}`,
        NOPS_TENANT: TENANT,
        NOPS_AGENT_NAME: NAME,
        NOPS_DEV_IDENTITY_DIR: kernel.devIdentityDir,
        NOPS_API_KEY: key.secret,
        NOPS_API_KEY_GRACE_MS: "30000",
        NOPS_KERNEL_LOAD: "4",
        NOPS_DRAIN_TIMEOUT_MS: "20000",
      });

      // 1. Register.
      const ready = await agent.waitEvent("ready");
      let agents = await mine();
      t.is(agents.length, 1, "exactly one agent registered");
      t.is(agents[0]?.id, ready.agentId as string);
      t.is(agents[0]?.endpoint, ready.endpoint as string);
      t.deepEqual(agents[0]?.capabilities.map((c) => c.name).sort(), ["echo", "fail", "slow", "stats"]);

      // 2. Heartbeats keep it HEALTHY well past the TTL, with load figures.
      await waitFor(
        async () => {
          const a = (await mine())[0];
          return !!a && Number(a.heartbeatAt!.seconds) - Number(a.registeredAt!.seconds) >= (3 * TTL_MS) / 1000;
        },
        "heartbeats for three TTLs",
        20_000,
        200,
      );
      agents = await mine();
      t.is(agents[0]?.status, AgentStatus.HEALTHY);
      t.truthy(agents[0]?.load, "heartbeats carry load");

      // 3. The kernel's Invoke reaches the handler with the deadline and the trace context.
      const traceId = "4bf92f3577b34da6a3ce929d0e0e4736";
      const sentAt = Date.now();
      const echoed = await routing.invoke(
        { tenant: TENANT, capability: "echo", payload: new TextEncoder().encode("hello") },
        { timeoutMs: 30_000, headers: { traceparent: `00-${traceId}-00f067aa0ba902b7-01` } },
      );
      const seen = JSON.parse(text(echoed.payload)) as Record<string, unknown>;
      t.is(seen.text, "hello");
      t.is(seen.traceId, traceId, "the handler's span continues the caller's trace");
      t.regex(String(seen.traceparent), new RegExp(`^00-${traceId}-`));
      t.true(typeof seen.deadlineMs === "number", "the handler sees a deadline");
      t.true((seen.deadlineMs as number) > sentAt && (seen.deadlineMs as number) <= sentAt + 30_000 + 1000);
      t.regex(String(seen.callerId), /^spiffe:\/\/nops\.local\/nops\/kernel\//, "only the kernel calls the agent");
      const failed = await t.throwsAsync(routing.invoke({ tenant: TENANT, capability: "fail" }, { timeoutMs: 30_000 }));
      t.is(ConnectError.from(failed).code, Code.InvalidArgument, "a typed handler error keeps its status");

      // 4. Rotate the API key three times under load: no call fails.
      agent.signal("SIGUSR1");
      await agent.waitEvent("load-started");
      let invokeFailures = 0;
      let invokes = 0;
      const loadDone = (async () => {
        const until = Date.now() + 60_000;
        while (agent.events("rotated").length < 3 && Date.now() < until) {
          try {
            await routing.invoke(
              { tenant: TENANT, capability: "echo", payload: new Uint8Array(1) },
              { timeoutMs: 30_000 },
            );
            invokes++;
          } catch {
            invokeFailures++;
          }
        }
      })();
      for (let i = 1; i <= 3; i++) {
        agent.signal("SIGUSR2");
        await agent.waitEvent("rotated", i);
      }
      await loadDone;
      agent.signal("SIGHUP");
      const load = await agent.waitEvent("load-stopped");
      t.is(load.kernelFailures, 0, `agent-side kernel failures: ${JSON.stringify(load.failures)}`);
      t.true((load.kernelCalls as number) > 0, "the agent called the kernel during the rotations");
      t.is(invokeFailures, 0, "invocations during rotation");
      t.true(invokes > 0);
      const listed = await keys.listApiKeys({ tenant: TENANT });
      t.truthy(
        listed.apiKeys.find((k) => k.keyId === key.apiKey!.keyId)?.rotateTime,
        "the kernel recorded the rotation",
      );

      // 5. Kill the kernel and restart it on the same data dir: the agent carries on by itself.
      await kernel.kill();
      await kernel.start();
      const before = agents[0]!;
      await waitFor(
        async () => {
          const a = (await mine())[0];
          return !!a && a.status === AgentStatus.HEALTHY && a.heartbeatAt!.seconds > before.heartbeatAt!.seconds;
        },
        "heartbeats after the kernel restart",
        30_000,
        200,
      );
      agents = await mine();
      t.is(agents.length, 1);
      t.is(agents[0]?.id, ready.agentId as string, "same data dir: same agent");

      //    When the kernel forgets the agent (an operator removes it, or a reap), it registers again.
      await registry.deregisterAgent({ tenant: TENANT, id: agents[0]!.id, reason: "conformance: forget" });
      const again = await agent.waitEvent("registered", 2, 30_000);
      t.true(again.reregistered);
      agents = await mine();
      t.is(agents.length, 1, "re-registration leaves exactly one agent");
      t.is(agents[0]?.id, again.agentId as string);

      // 6. A 1 ms-deadline RegisterAgent retried 10 times leaves exactly one agent.
      const probe = {
        tenant: TENANT,
        name: "retry-probe",
        version: "1",
        endpoint: "127.0.0.1:9",
        idempotencyKey: "conformance-retry-probe",
      };
      for (let i = 0; i < 10; i++) await registry.registerAgent(probe, { timeoutMs: 1 }).catch(() => undefined);
      await registry.registerAgent(probe);
      t.is((await registry.listAgents({ tenant: TENANT })).agents.filter((a) => a.name === "retry-probe").length, 1);

      // 7. SIGTERM drains: the calls in flight all finish, then the agent is gone from the kernel.
      const slow = Array.from({ length: 5 }, (_, i) =>
        routing.invoke(
          {
            tenant: TENANT,
            capability: "slow",
            payload: new TextEncoder().encode(JSON.stringify({ ms: 1500, tag: i })),
          },
          { timeoutMs: 15_000 },
        ),
      );
      await agent.waitEvent("slow-started", 5);
      agent.signal("SIGTERM");
      const results = await Promise.allSettled(slow);
      t.deepEqual(
        results.map((r) => r.status),
        ["fulfilled", "fulfilled", "fulfilled", "fulfilled", "fulfilled"],
        JSON.stringify(results.filter((r) => r.status === "rejected").map((r) => String(r.reason))),
      );
      const drained = await agent.waitEvent("drained", 1, 30_000);
      t.like(drained, { deregistered: true, cutCalls: 0 });
      t.is(await agent.child.exited, 0);
      t.is((await mine()).length, 0, "deregistered");
    },
  );
}
