import test from "ava";
import { appendFileSync } from "node:fs";
import { join } from "node:path";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { createLeafLog, linkRefusalOf, listenLeafSyslog, parseLeafLogLine } from "../../src/events/leaf-log.js";
import { toGetStatusResponse } from "../../src/admin/admin-service.js";
import { createManualClock } from "../../src/common/clock.js";
import { createSilentLogger } from "../../src/telemetry/logger.js";
import { startEdgeFleet } from "../helpers/nats-fleet.js";
import { waitFor } from "../helpers/processes.js";
import { makeMeter } from "../fixtures/dge-helpers.js";

// Lines as nats-server 2.9.10 writes them (stderr with -D, and remote syslog datagrams).
const STDERR_DENIED =
  '[10665] 2026/12/01 23:40:26.868173 [DBG] 127.0.0.1:37411 - lid:5 - Not permitted to deliver to "nops.events.globex.bad"';
const SYSLOG_DENIED =
  '<7>2026-12-01T23:43:36Z vm nats-server[14044]: 127.0.0.1:7422 - lid:3 - Not permitted to deliver to "$JS.hub.API.STREAM.CREATE.X"\n';
const HUB_REFUSED =
  '[10665] 2026/12/01 23:40:26.868173 [ERR] 127.0.0.1:7422 - lid:5 - Permissions Violation for Publish to "nops.fed.edge-b.globex.x"';
const SUB_VIOLATION =
  '[10665] 2026/12/01 23:40:23.387247 [DBG] 127.0.0.1:37411 - lid:5 - Permissions Violation for Subscription to "$SYS.REQ.ACCOUNT.PING.STATZ"';
const CLIENT_DENIED =
  '[10665] 2026/12/01 23:40:26.868173 [DBG] 127.0.0.1:5000 - cid:9 - Not permitted to deliver to "nops.events.acme.x"';

test("leaf log - parses nats-server's stderr and syslog lines and finds the hub link's refused publishes", (t) => {
  t.deepEqual(parseLeafLogLine(STDERR_DENIED), {
    level: "debug",
    message: '127.0.0.1:37411 - lid:5 - Not permitted to deliver to "nops.events.globex.bad"',
  });
  t.is(parseLeafLogLine(SYSLOG_DENIED)?.level, "debug");
  t.deepEqual(parseLeafLogLine("<5>2026-12-01T23:43:36Z vm nats-server[1]: Starting nats-server"), {
    level: "info",
    message: "Starting nats-server",
  });
  t.is(parseLeafLogLine("<4>2026-12-01T23:43:36Z vm nats-server[1]: slow")?.level, "warn");
  t.is(parseLeafLogLine("<3>2026-12-01T23:43:36Z vm nats-server[1]: bad")?.level, "error");
  t.is(parseLeafLogLine("         https://docs.nats.io/jetstream"), undefined, "banner continuation");

  t.deepEqual(linkRefusalOf(parseLeafLogLine(STDERR_DENIED)!.message), {
    subject: "nops.events.globex.bad",
    by: "leaf",
  });
  t.deepEqual(linkRefusalOf(parseLeafLogLine(SYSLOG_DENIED)!.message), {
    subject: "$JS.hub.API.STREAM.CREATE.X",
    by: "leaf",
  });
  t.deepEqual(linkRefusalOf(parseLeafLogLine(HUB_REFUSED)!.message), {
    subject: "nops.fed.edge-b.globex.x",
    by: "hub",
  });
  t.is(linkRefusalOf(parseLeafLogLine(SUB_VIOLATION)!.message), undefined, "interest the hub refused is no publish");
  t.is(
    linkRefusalOf(parseLeafLogLine(CLIENT_DENIED)!.message),
    undefined,
    "a local client's permission is not the link's",
  );
});

test("leaf log - counts refusals with the last subject and time, a metric per edge and where, and GetStatus shows them", async (t) => {
  const clock = createManualClock(1_700_000_000_000);
  const meter = makeMeter();
  const log = createLeafLog({ clock, logger: createSilentLogger(), meter: meter.provider.getMeter("t") }, "edge-a");
  t.deepEqual(log.status(), { edgeId: "edge-a", rejectedPublishes: 0 });
  log.handle(STDERR_DENIED);
  log.handle(CLIENT_DENIED);
  log.handle(SUB_VIOLATION);
  clock.advance(5000);
  log.handle(HUB_REFUSED);
  t.deepEqual(log.status(), {
    edgeId: "edge-a",
    rejectedPublishes: 2,
    lastRejectedAt: 1_700_000_005_000,
    lastRejectedSubject: "nops.fed.edge-b.globex.x",
  });
  const points = (await meter.collect()).get("nops_events_hub_link_rejected_publishes") ?? [];
  t.deepEqual(
    points.map((p) => [p.attributes, p.value]),
    [
      [{ edge: "edge-a", by: "leaf" }, 1],
      [{ edge: "edge-a", by: "hub" }, 1],
    ],
  );
  const status = toGetStatusResponse(
    { ready: true, status: "ready", dependencies: [], capabilities: [], checkedAt: clock.now() },
    "test",
    [],
    log.status(),
  );
  t.is(status.hubLink?.edgeId, "edge-a");
  t.is(status.hubLink?.rejectedPublishes, 2n);
  t.is(status.hubLink?.lastRejectedSubject, "nops.fed.edge-b.globex.x");
  t.is(Number(status.hubLink?.lastRejected?.seconds), 1_700_000_005);
  t.is(
    toGetStatusResponse({ ready: true, status: "ready", dependencies: [], capabilities: [], checkedAt: 0 }, "t")
      .hubLink,
    undefined,
  );
});

/** Publishes `control` until `hub` sees it: the hub's interest has crossed the edge's link. */
async function interestCrossed(from: NatsConnection, seen: string[], control: string): Promise<void> {
  await waitFor(
    async () => {
      from.publish(control);
      await from.flush();
      return seen.includes(control);
    },
    `interest in ${control} across the link`,
    60_000,
    200,
  );
}

test.serial(
  "hub link - publishes outside an edge's hub permissions are counted for that edge from its leaf's syslog, real nats-servers",
  async (t) => {
    const fleet = await startEdgeFleet({
      hubNodes: 1,
      direct: true,
      edges: [
        { edgeId: "edge-a", tenants: ["acme"] },
        { edgeId: "edge-b", tenants: ["globex"] },
      ],
    });
    t.teardown(() => fleet.destroy());
    const meter = makeMeter();
    const logs = Object.fromEntries(
      await Promise.all(
        ["edge-a", "edge-b"].map(async (edgeId) => {
          const log = createLeafLog(
            { clock: createManualClock(0), logger: createSilentLogger(), meter: meter.provider.getMeter("t") },
            edgeId,
          );
          const listener = await listenLeafSyslog(log, 0);
          t.teardown(() => listener.close());
          // As the chart runs the sidecar: debug lines to the kernel's loopback syslog port.
          appendFileSync(
            join(fleet.dir, `leaf-${edgeId}.conf`),
            `debug: true\nremote_syslog: "udp://127.0.0.1:${listener.port}"\n`,
          );
          await fleet.edges[edgeId]!.leaf.start(); // restarts it with the amended config
          return [edgeId, log] as const;
        }),
      ),
    );
    const hub = await connect({ servers: fleet.hubUrls, user: fleet.hubUser.user, pass: fleet.hubUser.pass });
    const onA = await connect({ servers: fleet.edges["edge-a"]!.leaf.url, ...fleet.kernelUser });
    const onB = await connect({ servers: fleet.edges["edge-b"]!.leaf.url, ...fleet.kernelUser });
    t.teardown(() => Promise.all([hub.close(), onA.close(), onB.close()]));
    const seen: string[] = [];
    hub.subscribe("nops.>", {
      callback: (_err, m) => {
        seen.push(m.subject);
      },
    });
    await hub.flush();
    await interestCrossed(onA, seen, "nops.events.acme.control");
    await interestCrossed(onB, seen, "nops.events.globex.control");

    // A serves acme only: another tenant's subjects and B's delivery prefix are refused on A's link.
    for (const s of ["nops.events.globex.x", "nops.events.globex.y", "nops.deliver.hub.edge-b.S.x"]) onA.publish(s);
    onA.publish("nops.events.acme.end");
    onB.publish("nops.events.acme.z");
    onB.publish("nops.events.globex.end");
    await Promise.all([onA.flush(), onB.flush()]);
    await waitFor(
      () => seen.includes("nops.events.acme.end") && seen.includes("nops.events.globex.end"),
      "allowed publishes at the hub",
      60_000,
      50,
    );
    await waitFor(
      () => logs["edge-a"]!.status().rejectedPublishes === 3 && logs["edge-b"]!.status().rejectedPublishes === 1,
      "refusals counted per edge",
      60_000,
      50,
    );
    t.deepEqual(
      seen.filter((s) => !s.endsWith(".control") && !s.endsWith(".end")),
      [],
      "nothing refused reached the hub",
    );
    t.is(logs["edge-a"]!.status().lastRejectedSubject, "nops.deliver.hub.edge-b.S.x");
    t.is(logs["edge-b"]!.status().lastRejectedSubject, "nops.events.acme.z");
    const points = (await meter.collect()).get("nops_events_hub_link_rejected_publishes") ?? [];
    // A series exists from its first refusal, and the two edges' refusals race: compare in edge order.
    t.deepEqual(
      points
        .map((p) => [p.attributes, p.value] as const)
        .sort(([a], [b]) => String(a.edge).localeCompare(String(b.edge))),
      [
        [{ edge: "edge-a", by: "leaf" }, 3],
        [{ edge: "edge-b", by: "leaf" }, 1],
      ],
    );
  },
);
