import { execFile } from "node:child_process";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { promisify } from "node:util";
import test from "ava";
import { Code, ConnectError } from "@connectrpc/connect";
import { AgentRegistryService, AgentStatus } from "../../gen/nops/kernel/v1/agent_registry_pb.js";
import { ApiKeyService, Role } from "../../gen/nops/kernel/v1/api_key_pb.js";
import { RoutingService } from "../../gen/nops/kernel/v1/routing_pb.js";
import { waitFor } from "../helpers/processes.js";
import { events, kernelProcess, PYTHON, ROOT, SDK_PYTHONPATH, spawnProc, type Proc } from "./python-helpers.js";

const run = promisify(execFile);
const TENANT = "acme";
const AGENT = join(ROOT, "test/sdk/agents/python/agent.py");

function startAgent(t: Parameters<typeof spawnProc>[0], env: Record<string, string>): Proc {
  return spawnProc(
    t,
    PYTHON,
    [AGENT],
    { PYTHONPATH: SDK_PYTHONPATH, PYTHONUNBUFFERED: "1", GRPC_VERBOSITY: "NONE", NOPS_TENANT: TENANT, ...env },
    true,
  );
}

async function event(p: Proc, name: string, after = 0): Promise<Record<string, unknown>> {
  let found: Record<string, unknown> | undefined;
  await waitFor(
    () => {
      found = events(p)
        .slice(after)
        .find((e) => e.event === name);
      return found !== undefined;
    },
    `the agent's ${name} event`,
    30_000,
  ).catch((e: unknown) => {
    throw new Error(`${(e as Error).message}\n--- agent output ---\n${p.lines.slice(-40).join("\n")}`);
  });
  return found!;
}

async function codeOf(p: Promise<unknown>): Promise<Code | "ok"> {
  try {
    await p;
    return "ok";
  } catch (e) {
    return ConnectError.from(e).code;
  }
}

test("python sdk - unit tests pass on Debian's python3-grpcio and python3-protobuf", async (t) => {
  const { stdout, stderr } = await run(
    PYTHON,
    ["-m", "unittest", "discover", "-s", "sdk/python/tests", "-t", "sdk/python/tests"],
    {
      cwd: ROOT,
      env: {
        ...process.env,
        PYTHONPATH: `${SDK_PYTHONPATH}:${join(ROOT, "sdk/python/tests")}`,
        GRPC_VERBOSITY: "NONE",
      },
      timeout: 180_000,
    },
  ).catch((e: { stdout?: string; stderr?: string; message: string }) => {
    throw new Error(`${e.message}\n${e.stdout ?? ""}\n${e.stderr ?? ""}`);
  });
  const summary = /Ran (\d+) tests?/.exec(stdout + stderr);
  t.truthy(summary, stderr);
  t.true(Number(summary![1]) >= 20, "the whole unit suite ran");
  t.regex(stderr, /\nOK\b/);
});

test("python sdk - committed stubs are what generate.sh makes of proto/", async (t) => {
  const { stdout } = await run("bash", [join(ROOT, "sdk/python/scripts/check-generated.sh")], { cwd: ROOT });
  t.regex(stdout, /up to date/);
});

test("python sdk - conformance: register, heartbeat, invoke, kernel restart, drain, retried registration", async (t) => {
  const k = await kernelProcess(t, 1500);
  await k.start("kernel-1.db");
  const registry = k.client(AgentRegistryService);
  const routing = k.client(RoutingService);
  const agent = startAgent(t, {
    AGENT_NAME: "conformance-py",
    NOPS_KERNEL_ADDRESS: `localhost:${k.grpcPort}`,
    NOPS_IDENTITY_DIR: k.devDir,
  });
  const registered = await event(agent, "registered");
  const firstId = String(registered.agentId);

  // Heartbeats keep it HEALTHY past several TTLs (1.5 s each).
  const { agent: a0 } = await registry.getAgent({ tenant: TENANT, id: firstId });
  t.is(a0?.status, AgentStatus.HEALTHY);
  const beatAt0 = Number(a0?.heartbeatAt?.seconds ?? 0) * 1000 + (a0?.heartbeatAt?.nanos ?? 0) / 1e6;
  const until = Date.now() + 4_000;
  while (Date.now() < until) {
    const { agent: a } = await registry.getAgent({ tenant: TENANT, id: firstId });
    t.is(a?.status, AgentStatus.HEALTHY);
    await new Promise((r) => setTimeout(r, 500));
  }
  const { agent: a1 } = await registry.getAgent({ tenant: TENANT, id: firstId });
  t.true(Number(a1?.heartbeatAt?.seconds ?? 0) * 1000 + (a1?.heartbeatAt?.nanos ?? 0) / 1e6 > beatAt0 + 1000);

  // The kernel's Invoke reaches the handler with the caller's deadline and trace context.
  const traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
  const res = await routing.invoke(
    { tenant: TENANT, capability: "echo", payload: new TextEncoder().encode("hello"), contentType: "text/plain" },
    { timeoutMs: 30_000, headers: { traceparent } },
  );
  const seen = JSON.parse(new TextDecoder().decode(res.payload)) as Record<string, unknown>;
  t.is(seen.payload, "hello");
  t.is(res.agentId, firstId);
  t.true(Number(seen.remainingMs) > 0 && Number(seen.remainingMs) <= 30_000, String(seen.remainingMs));
  t.is(String(seen.traceparent).split("-")[1], "4bf92f3577b34da6a3ce929d0e0e4736");
  const chunks: string[] = [];
  for await (const c of routing.invokeStream({
    tenant: TENANT,
    capability: "count",
    payload: new TextEncoder().encode("3"),
  }))
    chunks.push(new TextDecoder().decode(c.payload));
  t.deepEqual(chunks, ["0", "1", "2"]);

  // The SDK's helpers through the kernel, with the agent's own (AGENT) identity: invoke a capability
  // (here its own) and publish an event (durable in the kernel's outbox).
  let n0 = events(agent).length;
  agent.proc.stdin!.write("invoke echo via-sdk\n");
  const invoked = await event(agent, "invoked", n0);
  t.is(invoked.agentId, firstId);
  t.is((JSON.parse(String(invoked.payload)) as { payload: string }).payload, "via-sdk");
  n0 = events(agent).length;
  agent.proc.stdin!.write("publish notes.created.v1 hello\n");
  const published = await event(agent, "published", n0);
  t.truthy(published.eventId);
  t.is(published.duplicate, false);

  // Kill the kernel; restart it on a new database (it forgets every agent): the agent registers again by itself.
  await k.kill();
  await k.start("kernel-2.db");
  const again = await event(agent, "agent-id");
  const secondId = String(again.agentId);
  t.not(secondId, firstId);
  await waitFor(
    async () => (await registry.getAgent({ tenant: TENANT, id: secondId })).agent?.status === AgentStatus.HEALTHY,
    "the re-registered agent to be HEALTHY",
    10_000,
  );

  // Ten RegisterAgent retries cut short by a 1 ms deadline, then one that completes: still one agent.
  const n = events(agent).length;
  agent.proc.stdin!.write("register-retry 10 1\n");
  const retried = await event(agent, "register-retried", n);
  t.is(retried.agentId, secondId);
  t.log(`1 ms attempts that failed: ${String(retried.failures)} of 10`);
  const { agents } = await registry.listAgents({ tenant: TENANT });
  t.is(agents.filter((x) => x.name === "conformance-py").length, 1);

  // SIGTERM while a call is in flight: the call completes, then the agent deregisters and exits 0.
  const slow = routing.invoke(
    { tenant: TENANT, capability: "slow", payload: new TextEncoder().encode("1500") },
    { timeoutMs: 10_000 },
  );
  await event(agent, "slow-started");
  agent.kill("SIGTERM");
  const answer = await slow;
  t.is(new TextDecoder().decode(answer.payload), "done");
  t.is(await agent.exited, 0);
  t.truthy(events(agent).find((e) => e.event === "stopped"));
  t.is(await codeOf(registry.getAgent({ tenant: TENANT, id: secondId })), Code.NotFound);
});

test("python sdk - conformance: rotating the API key under load fails no call", async (t) => {
  const k = await kernelProcess(t, 3000);
  await k.start();
  const keys = k.client(ApiKeyService);
  const routing = k.client(RoutingService);
  const created = await keys.createApiKey({ tenant: TENANT, name: "conformance-py", role: Role.AGENT });
  const keyFile = join(k.dir, "agent-api-key");
  writeFileSync(keyFile, created.secret + "\n", { mode: 0o600 });
  const agent = startAgent(t, {
    AGENT_NAME: "keyed-py",
    // Key callers use the HTTP/2 port: the gRPC port admits only client certificates.
    NOPS_KERNEL_ADDRESS: `localhost:${k.httpPort}`,
    NOPS_API_KEY_FILE: keyFile,
    NOPS_IDENTITY_DIR: k.devDir,
  });
  await event(agent, "registered");

  // Load both ways: the kernel invokes the agent, and the agent calls the kernel with its key.
  let invokes = 0;
  let invokeFailures = 0;
  let stop = false;
  t.teardown(() => (stop = true));
  const kernelLoad = (async () => {
    while (!stop) {
      try {
        await routing.invoke(
          { tenant: TENANT, capability: "echo", payload: new Uint8Array([1]) },
          { timeoutMs: 30_000 },
        );
        invokes++;
      } catch {
        invokeFailures++;
      }
    }
  })();
  agent.proc.stdin!.write("load-start\n");
  // Every rotation lands while both loads are running: each waits for a few more calls each way (by count,
  // not by time, so a loaded machine only makes it slower), and so does the end of the load.
  let agentCalls = 0;
  const moreCalls = async (): Promise<void> => {
    const [agentBefore, invokesBefore] = [agentCalls, invokes];
    await waitFor(
      async () => {
        const n = events(agent).length;
        agent.proc.stdin!.write("load-progress\n");
        agentCalls = Number((await event(agent, "load-progress", n)).calls);
        return agentCalls >= agentBefore + 3 && invokes >= invokesBefore + 3;
      },
      "three more calls each way",
      60_000,
    );
  };
  for (let i = 0; i < 3; i++) {
    await moreCalls();
    const n = events(agent).length;
    agent.proc.stdin!.write("rotate\n");
    const rotated = await event(agent, "rotated", n);
    t.is(rotated.keyId, created.apiKey?.keyId);
  }
  await moreCalls();
  const n = events(agent).length;
  agent.proc.stdin!.write("load-stop\n");
  const load = await event(agent, "load", n);
  stop = true;
  await kernelLoad;
  t.true(Number(load.calls) > 10, `agent calls: ${String(load.calls)}`);
  t.is(load.failures, 0);
  t.true(invokes > 10, `invokes: ${invokes}`);
  t.is(invokeFailures, 0);
  t.falsy(events(agent).find((e) => e.event === "error"));
  // The key file holds the newest key, and the old secret stopped being the current one.
  const { readFileSync } = await import("node:fs");
  t.not(readFileSync(keyFile, "utf8").trim(), created.secret);
  agent.kill("SIGTERM");
  t.is(await agent.exited, 0);
});
