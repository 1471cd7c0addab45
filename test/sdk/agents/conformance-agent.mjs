// The TypeScript SDK's conformance agent: the process test/sdk/conformance.test.ts drives (the
// contract is in test/sdk/README.md). Plain JavaScript so it runs from an installed npm pack
// tarball with nothing but node.
import { createAgent, HandlerError, Code } from "@nops/agent-sdk";

const env = (name, fallback) => {
  const v = process.env[name] ?? fallback;
  if (v === undefined) {
    process.stderr.write(`conformance-agent: ${name} is required\n`);
    process.exit(2);
  }
  return v;
};
const say = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");
const tenant = env("NOPS_TENANT");
const stats = { kernelCalls: 0, kernelFailures: 0, failures: [], rotations: 0, served: 0 };
const json = (payload) => JSON.parse(new TextDecoder().decode(payload) || "{}");
const sleep = (ms, signal) =>
  new Promise((resolve, reject) => {
    const t = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => (clearTimeout(t), reject(signal.reason)), { once: true });
  });

const agent = createAgent({
  tenant,
  name: env("NOPS_AGENT_NAME"),
  version: "1.0.0",
  kernelUrl: env("NOPS_KERNEL_URL"),
  identity: { type: "dev", dir: env("NOPS_DEV_IDENTITY_DIR") },
  ...(process.env.NOPS_API_KEY ? { apiKey: process.env.NOPS_API_KEY } : {}),
  apiKeyRotation: { gracePeriodMs: Number(env("NOPS_API_KEY_GRACE_MS", "60000")) },
  drain: { timeoutMs: Number(env("NOPS_DRAIN_TIMEOUT_MS", "30000")) },
  capabilities: {
    echo: {
      async handle(payload, ctx) {
        stats.served++;
        return JSON.stringify({
          text: new TextDecoder().decode(payload),
          deadlineMs: ctx.deadline?.getTime() ?? null,
          traceparent: ctx.traceparent ?? null,
          traceId: ctx.span.spanContext().traceId,
          requestId: ctx.requestId,
          attempt: ctx.attempt,
          callerId: ctx.callerId ?? null,
        });
      },
    },
    slow: {
      async handle(payload, ctx) {
        const { ms = 1000, tag = "" } = json(payload);
        say({ event: "slow-started", tag });
        await sleep(ms, ctx.signal);
        stats.served++;
        return JSON.stringify({ slept: ms, tag });
      },
    },
    stats: {
      async handle() {
        return JSON.stringify(stats);
      },
    },
    fail: {
      async handle() {
        throw new HandlerError(Code.InvalidArgument, "asked to fail");
      },
    },
  },
});

const failed = (where, e) => {
  stats.kernelFailures++;
  if (stats.failures.length < 20) stats.failures.push(`${where}: ${e?.message ?? e}`);
};
agent.on("registered", (e) => say({ event: "registered", ...e }));
agent.on("apiKeyRotated", (e) => {
  stats.rotations++;
  say({ event: "rotated", ...e });
});
agent.on("warning", (e) => failed("warning", e));
agent.on("kernelUnavailable", (e) => say({ event: "kernel-unavailable", message: e.message }));
agent.on("drained", (e) => say({ event: "drained", ...e }));

process.on("SIGUSR2", () => {
  agent.rotateApiKey().catch((e) => failed("rotate", e));
});

await agent.start();
say({ event: "ready", agentId: agent.id, endpoint: agent.endpoint });

// Load on the kernel from the agent's own credential, to show a key rotation fails no call.
// SIGUSR1 starts it and SIGHUP stops it, so the kernel restart does not count as failures.
let loading = false;
const concurrency = Number(env("NOPS_KERNEL_LOAD", "0"));
const worker = async () => {
  while (loading && agent.state === "running") {
    try {
      await agent.kernel.registry.getAgent({ tenant, id: agent.id }, { timeoutMs: 5000 });
      stats.kernelCalls++;
    } catch (e) {
      failed("load", e);
    }
  }
};
process.on("SIGUSR1", () => {
  if (loading) return;
  loading = true;
  for (let i = 0; i < concurrency; i++) void worker();
  say({ event: "load-started", concurrency });
});
process.on("SIGHUP", () => {
  loading = false;
  say({ event: "load-stopped", ...stats });
});
