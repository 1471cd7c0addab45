import test from "ava";
import { fromBinary } from "@bufbuild/protobuf";
import Database from "better-sqlite3";
import { AgentRegistryService } from "../../gen/nops/kernel/v1/agent_registry_pb.js";
import { EventBusService } from "../../gen/nops/kernel/v1/event_bus_pb.js";
import { AgentRegisteredSchema } from "../../gen/nops/events/v1/agent_events_pb.js";
import { startNatsTopology } from "../helpers/nats-servers.js";
import { startTestKernel } from "../helpers/kernel.js";
import { waitFor } from "../helpers/processes.js";
import { readStreamEnvelopes } from "./hub-reader.js";

test("kernel events - registry writes and Publish reach the hub through the leaf; a PII event of a tier 3 tenant is held at the edge", async (t) => {
  const topo = await startNatsTopology({ edgeDomain: "edge-k" });
  t.teardown(() => topo.destroy());
  const k = await startTestKernel(t, {
    edgeId: "edge-k",
    nats: { url: topo.leaf.url },
    events: {
      natsUser: topo.kernelUser.user,
      natsPassword: topo.kernelUser.pass,
      edgeDomain: topo.edgeDomain,
      confirmIntervalMs: 200,
    },
    egress: { tenantTiers: { acme: 1, globex: 3 } },
  });
  const registry = k.client(AgentRegistryService, "grpc-js");
  const bus = k.client(EventBusService, "connect-json");
  const { agent } = await registry.registerAgent({
    tenant: "acme",
    name: "a",
    version: "1",
    endpoint: "grpc://summarizer.acme.svc:7000",
  });
  const published = await bus.publish({
    tenant: "acme",
    subject: "orders.created",
    payload: new TextEncoder().encode('{"order":"A-1001","items":3}'),
    idempotencyKey: "k-1",
  });
  // An agent record of a tier 3 tenant naming a public IP address: the DGE calls that PII (private,
  // loopback and documentation addresses are the edge's own and are not).
  await registry.registerAgent({ tenant: "globex", name: "g", version: "1", endpoint: "81.2.69.142:7000" });

  const hubStream = k.kernel.options.events.hubStreamName;
  let envelopes: Awaited<ReturnType<typeof readStreamEnvelopes>> = [];
  await waitFor(
    async () => {
      envelopes = await readStreamEnvelopes(topo.hub.url, topo.hubUser, hubStream);
      return (
        envelopes.some((e) => e.type === "agent.registered.v1") && envelopes.some((e) => e.id === published.eventId)
      );
    },
    "events at the hub",
    30_000,
  ).catch((e: unknown) => {
    throw new Error(
      `${String(e)}\n${k.logs
        .filter((l) => /events|relay|nats|egress|blocked/i.test(l))
        .slice(-15)
        .join("\n")}`,
    );
  });
  const registered = envelopes.find((e) => e.type === "agent.registered.v1" && e.tenant === "acme")!;
  t.is(fromBinary(AgentRegisteredSchema, registered.payload).agent?.id, agent!.id);
  t.false(
    envelopes.some((e) => e.tenant === "globex" && e.type === "agent.registered.v1"),
    "the tier 3 PII event never left the edge",
  );

  // The globex row comes after the published event in the outbox, so the relay may reach it
  // after the hub already holds the others; and readiness is re-evaluated on its own tick. Both
  // are waited for (bounded) rather than read at one instant.
  const db = new Database(k.kernel.options.databasePath, { readonly: true });
  t.teardown(() => db.close());
  const blocked = () => (db.prepare("SELECT count(*) AS n FROM outbox_blocked").get() as { n: number }).n;
  await waitFor(() => blocked() > 0, "the tier 3 PII event to be held", 10_000);
  t.is(blocked(), 1, "the held event stays visible at the edge");
  let leafState: string | undefined;
  await waitFor(
    async () => {
      const ready = (await (await fetch(`http://127.0.0.1:${k.kernel.httpPort}/readyz`)).json()) as {
        dependencies: { name: string; state: string }[];
      };
      leafState = ready.dependencies.find((d) => d.name === "nats-leaf")?.state;
      return leafState === "ok";
    },
    "readiness to report the NATS leaf ok",
    10_000,
  ).catch(() => undefined);
  t.is(leafState, "ok");
});
