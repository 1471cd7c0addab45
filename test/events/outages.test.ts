import test, { type ExecutionContext } from "ava";
import { spawn, type ChildProcess } from "node:child_process";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { startNatsTopology, waitFor, type NatsTopology } from "../helpers/nats-servers.js";
import { startEdgePipeline, tempDbPath, type EdgePipeline } from "./edge-pipeline.js";
import { countIds, hubStreamCount, readStreamEnvelopes } from "./hub-reader.js";

const HUB_STREAM = "NOPS_EDGE_EDGE1";

function pipelineFor(topo: NatsTopology, onPublished?: () => void): EdgePipeline {
  return startEdgePipeline({
    dbPath: tempDbPath(),
    natsUrl: topo.leaf.url,
    user: topo.kernelUser.user,
    pass: topo.kernelUser.pass,
    edgeId: "edge1",
    edgeDomain: topo.edgeDomain,
    onPublished,
  });
}

async function waitHubLinked(p: EdgePipeline): Promise<void> {
  await waitFor(
    async () =>
      p.bus.confirmNow().then(
        () => true,
        () => false,
      ),
    "hub stream reachable through the leaf",
    60_000,
    200,
  );
}

/** Polls the hub stream (message by message) until it holds every acknowledged event id. */
async function waitHubHas(topo: NatsTopology, acked: ReadonlySet<string>): Promise<void> {
  await waitFor(
    async () => {
      if ((await hubStreamCount(topo, HUB_STREAM)) < acked.size) return false;
      const ids = new Set((await readStreamEnvelopes(topo.hub.url, topo.hubUser, HUB_STREAM)).map((e) => e.id));
      return [...acked].every((id) => ids.has(id));
    },
    "hub to hold every acknowledged event",
    180_000,
    1000,
  );
}

/** Asserts each acknowledged event id is at the hub exactly once and nothing else is. */
async function assertHubExactlyOnce(
  t: ExecutionContext,
  topo: NatsTopology,
  acked: ReadonlySet<string>,
  tenant = "acme",
): Promise<void> {
  const envelopes = (await readStreamEnvelopes(topo.hub.url, topo.hubUser, HUB_STREAM)).filter(
    (e) => e.tenant === tenant,
  );
  const counts = countIds(envelopes);
  const missing = [...acked].filter((id) => !counts.has(id));
  const duplicated = [...counts].filter(([, n]) => n > 1);
  t.deepEqual(missing, [], "every acknowledged event reached the hub");
  t.deepEqual(duplicated, [], "no event reached the hub twice");
}

test.serial(
  "event bus - hub stopped, 5,000 events published at the edge, hub restarted: all 5,000 at the hub, none twice",
  async (t) => {
    const topo = await startNatsTopology();
    t.teardown(() => topo.destroy());
    const p = pipelineFor(topo);
    t.teardown(() => p.close());
    await waitHubLinked(p);
    await topo.hub.stop();
    const acked = new Set<string>();
    for (let i = 0; i < 5000; i += 100) {
      const batch = await Promise.all(
        Array.from({ length: 100 }, (_, j) =>
          p.publish({ tenant: "acme", subject: "orders.created.v1", payload: new TextEncoder().encode(String(i + j)) }),
        ),
      );
      for (const r of batch) acked.add(r.eventId);
    }
    t.is(acked.size, 5000);
    await waitFor(() => p.bus.relay.depth() === 0, "relay to drain into the leaf stream", 120_000);
    await waitFor(() => p.bus.status().state === "degraded", "hub outage to be reported", 60_000);
    t.regex(p.bus.status().reason ?? "", /hub/);
    await topo.hub.start();
    await waitHubHas(topo, acked);
    await assertHubExactlyOnce(t, topo, acked);
    const envelopes = await readStreamEnvelopes(topo.hub.url, topo.hubUser, HUB_STREAM);
    t.is(envelopes.filter((e) => e.tenant === "acme").length, 5000);
    // Once confirmed, the outbox rows are marked (and pruned after pruneAfterMs, not before).
    await waitFor(
      async () => {
        await p.bus.confirmNow().catch(() => undefined);
        return (
          (
            p.db.prepare("SELECT count(*) AS n FROM outbox WHERE tenant = 'acme' AND confirmed_at IS NULL").get() as {
              n: number;
            }
          ).n === 0
        );
      },
      "rows confirmed by the hub",
      60_000,
      250,
    );
  },
);

test.serial(
  "event bus - leaf killed with kill -9 mid-run and restarted: every acknowledged Publish reaches the hub exactly once",
  async (t) => {
    const topo = await startNatsTopology();
    t.teardown(() => topo.destroy());
    let relayed = 0;
    let killedPid: number | undefined;
    // kill -9 from inside the relay's PubAck path, so publishes are in flight when the leaf dies.
    const p = pipelineFor(topo, () => {
      relayed++;
      const pid = topo.leaf.pid();
      if (relayed === 1000 && pid !== undefined) {
        killedPid = pid;
        process.kill(pid, "SIGKILL");
      }
    });
    t.teardown(() => p.close());
    await waitHubLinked(p);
    const acked = new Set<string>();
    for (let i = 0; i < 3000; i += 50) {
      const batch = await Promise.all(
        Array.from({ length: 50 }, (_, j) =>
          p.publish({ tenant: "acme", subject: "orders.created.v1", payload: new TextEncoder().encode(String(i + j)) }),
        ),
      );
      for (const r of batch) acked.add(r.eventId);
      if (i === 2000) {
        t.truthy(killedPid, "the leaf was killed mid-run");
        await waitFor(() => p.bus.status().state === "degraded", "NATS outage noticed", 60_000);
        await topo.leaf.start();
      }
    }
    t.is(acked.size, 3000);
    await waitHubHas(topo, acked);
    await waitFor(() => p.bus.relay.depth() === 0, "relay to drain", 60_000);
    await assertHubExactlyOnce(t, topo, acked);
  },
);

test.serial(
  "event bus - kernel process killed with kill -9 mid-run and restarted on the same database: every acknowledged event delivered once",
  async (t) => {
    const topo = await startNatsTopology();
    t.teardown(() => topo.destroy());
    const dbPath = tempDbPath();
    const fixture = fileURLToPath(new URL("./fixtures/edge-publisher.ts", import.meta.url));
    const acked = new Set<string>();
    const children: ChildProcess[] = [];
    t.teardown(() => {
      for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill("SIGKILL");
    });
    const runChild = (start: number, count: number, killAfterAcks?: number): Promise<void> =>
      new Promise((resolve, reject) => {
        const c = spawn(
          process.execPath,
          [
            "--import",
            "tsx",
            fixture,
            dbPath,
            topo.leaf.url,
            topo.kernelUser.user,
            topo.kernelUser.pass,
            "edge1",
            topo.edgeDomain,
            String(start),
            String(count),
          ],
          {
            stdio: ["ignore", "pipe", "inherit"],
          },
        );
        children.push(c);
        let acks = 0;
        createInterface({ input: c.stdout }).on("line", (line) => {
          const [kind, , eventId] = line.split(" ");
          if (kind === "ACK" && eventId) {
            acked.add(eventId);
            acks++;
            if (killAfterAcks !== undefined && acks === killAfterAcks) c.kill("SIGKILL");
          } else if (kind === "DONE") {
            resolve();
          }
        });
        c.once("exit", (code, signal) =>
          signal === "SIGKILL" ? resolve() : code === 0 ? resolve() : reject(new Error(`child exited ${code}`)),
        );
      });
    await runChild(0, 4000, 1500);
    const afterKill = acked.size;
    t.true(afterKill >= 1500);
    // Restart on the same database: the retried range overlaps; idempotency keys keep it at one event each.
    await runChild(1000, 3000);
    const last = children.at(-1);
    await waitHubHas(topo, acked);
    last?.kill("SIGTERM");
    await assertHubExactlyOnce(t, topo, acked);
  },
);
