import { join } from "node:path";
import test from "ava";
import { startNatsTopology } from "../helpers/nats-servers.js";
import { startTestKernel } from "../helpers/kernel.js";
import { waitFor } from "../helpers/processes.js";
import { events, PYTHON, ROOT, SDK_PYTHONPATH, spawnProc } from "./python-helpers.js";

test("python sdk - publish and subscribe through the kernel's event bus (NATS leaf) with the agent's own identity", async (t) => {
  const topo = await startNatsTopology({ edgeDomain: "edge-py" });
  t.teardown(() => topo.destroy());
  const k = await startTestKernel(t, {
    edgeId: "edge-py",
    identity: { source: "dev" },
    nats: { url: topo.leaf.url },
    events: { natsUser: topo.kernelUser.user, natsPassword: topo.kernelUser.pass, edgeDomain: topo.edgeDomain },
  });
  const agent = spawnProc(
    t,
    PYTHON,
    [join(ROOT, "test/sdk/agents/python/agent.py")],
    {
      PYTHONPATH: SDK_PYTHONPATH,
      PYTHONUNBUFFERED: "1",
      GRPC_VERBOSITY: "NONE",
      AGENT_NAME: "events-py",
      NOPS_TENANT: "acme",
      NOPS_KERNEL_ADDRESS: `localhost:${k.kernel.grpcPort}`,
      NOPS_IDENTITY_DIR: join(k.dir, "dev-identity"),
    },
    true,
  );
  await agent.line(/"event": "registered"/, "the agent to register");
  agent.proc.stdin!.write("subscribe notes_py notes.>\n");
  await agent.line(/"event": "subscribed"/, "the subscription");
  agent.proc.stdin!.write("publish notes.created.v1 first\n");
  agent.proc.stdin!.write("publish notes.created.v1 second\n");
  agent.proc.stdin!.write("publish other.thing.v1 filtered-out\n");
  const received = () => events(agent).filter((e) => e.event === "received");
  await waitFor(() => received().length >= 2, "both events delivered", 30_000).catch((e: unknown) => {
    throw new Error(`${String(e)}\n${agent.lines.slice(-30).join("\n")}`);
  });
  const published = events(agent).filter((e) => e.event === "published");
  t.is(published.length, 3);
  t.deepEqual(
    received().map((e) => (e.payload as { text: string }).text),
    ["first", "second"],
  );
  t.deepEqual(
    received().map((e) => e.eventId),
    published.slice(0, 2).map((e) => e.eventId),
  );
  agent.kill("SIGTERM");
  t.is(await agent.exited, 0);
});
