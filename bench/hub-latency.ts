// Edge -> hub -> other edge delivery latency (issue 15): two edge kernels (the real event bus
// pipeline: Publish -> SQLite outbox -> leaf NOPS_EVENTS -> federation forwarder + Egress Guard
// hook -> NOPS_FED_OUT -> hub NOPS_FED -> NOPS_FED_IN -> B's NOPS_EVENTS -> Subscribe on B), each
// on its own leaf nats-server linked to one hub nats-server with its own per-edge user and
// permissions (the production shape, no proxies). Open loop at a fixed rate; per message, the time
// from Publish acknowledged at A to the delivery reaching B's subscriber. Baseline in the same run:
// plain NATS messages from a client on A's leaf to a subscriber on B's leaf through the same hub
// and the same two permission-checked links (on `$JSC.R.>`, the only subject space both links
// carry as plain messages), same rate and size.
// Run: node --import tsx bench/hub-latency.ts [--rate 1000] [--seconds 10]
import { performance } from "node:perf_hooks";
import { create } from "@bufbuild/protobuf";
import { connect } from "@nats-io/transport-node";
import { jetstream, jetstreamManager, type JetStreamClient } from "@nats-io/jetstream";
import { fromBinary } from "@bufbuild/protobuf";
import { EventEnvelopeSchema } from "../gen/nops/events/v1/envelope_pb.js";
import { startEdgeFleet } from "../test/helpers/nats-fleet.js";
import { waitFor } from "../test/helpers/processes.js";
import { startEdgePipeline, tempDbPath, type EdgePipeline } from "../test/events/edge-pipeline.js";
import { ensureHubStreams } from "../src/events/hub-streams.js";
import {
  AckAction,
  AckRequestSchema,
  SubscribeRequestSchema,
  type SubscribeResponse,
} from "../gen/nops/kernel/v1/event_bus_pb.js";

function arg(name: string, fallback: number): number {
  const i = process.argv.indexOf(`--${name}`);
  const v = i >= 0 ? Number(process.argv[i + 1]) : fallback;
  if (!Number.isFinite(v) || v <= 0) throw new Error(`--${name} must be a positive number`);
  return v;
}

const RATE = arg("rate", 1000);
const SECONDS = arg("seconds", 10);
const PAYLOAD = new Uint8Array(256).fill(7);
const WARMUP = Math.min(500, Math.round(RATE));

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)] ?? NaN;
}

function summary(values: number[]): { p50: number; p99: number; max: number; n: number } {
  const s = [...values].sort((a, b) => a - b);
  return { p50: percentile(s, 50), p99: percentile(s, 99), max: s.at(-1) ?? NaN, n: s.length };
}

/** Calls `fire(i)` RATE times a second for SECONDS, evenly (open loop: never waits for a call). */
async function steady(fire: (i: number) => void): Promise<number> {
  const total = Math.round(RATE * SECONDS);
  const started = performance.now();
  let sent = 0;
  while (sent < total) {
    const due = Math.min(total, Math.floor(((performance.now() - started) / 1000) * RATE));
    while (sent < due) fire(sent++);
    await new Promise((r) => setTimeout(r, 1));
  }
  return total;
}

/** Subscribes on B and acks every delivery (without waiting); records when each event id arrived. */
function subscribeOn(edge: EdgePipeline, signal: AbortSignal): { at: Map<string, number>; done: Promise<void> } {
  const at = new Map<string, number>();
  const stream = edge.service.subscribe(
    create(SubscribeRequestSchema, { tenant: "acme", consumer: "bench", filter: "orders.>" }),
    edge.context(signal),
  );
  const acks: Promise<unknown>[] = [];
  const done = (async () => {
    try {
      for await (const r of stream) {
        const m = (r as SubscribeResponse).message;
        if (!m) continue;
        if (!at.has(m.eventId)) at.set(m.eventId, performance.now());
        acks.push(
          Promise.resolve(
            edge.service.ack(
              create(AckRequestSchema, {
                tenant: "acme",
                consumer: "bench",
                ackToken: m.ackToken,
                action: AckAction.ACK,
              }),
              edge.context(),
            ),
          ).catch(() => undefined),
        );
        if (acks.length > 1000) await Promise.all(acks.splice(0));
      }
    } catch (err) {
      if (!signal.aborted) throw err;
    }
    await Promise.all(acks);
  })();
  return { at, done };
}

/** Wall-clock ms with sub-ms precision, comparable with nats-server's stored-message timestamps. */
const wallNow = (): number => performance.timeOrigin + performance.now();

/** When each event of `ids` was stored in `stream` (server time, ms), read with an ordered consumer. */
async function storedAt(js: JetStreamClient, stream: string, ids: ReadonlySet<string>): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  const consumer = await js.consumers.get(stream);
  const last = (await consumer.info()).num_pending;
  if (last === 0) return out;
  const msgs = await consumer.consume();
  let n = 0;
  for await (const m of msgs) {
    try {
      const id = fromBinary(EventEnvelopeSchema, m.data).id;
      if (ids.has(id) && !out.has(id)) out.set(id, m.info.timestampNanos / 1e6);
    } catch {
      // not an envelope
    }
    if (++n >= last) break;
  }
  msgs.stop();
  return out;
}

const fmt = (n: number): string => n.toFixed(2);
const line = (name: string, s: ReturnType<typeof summary>): string =>
  `  ${name.padEnd(58)} p50 ${fmt(s.p50).padStart(8)} ms  p99 ${fmt(s.p99).padStart(8)} ms  max ${fmt(s.max).padStart(8)} ms  (n=${s.n})`;

const fleet = await startEdgeFleet({
  hubNodes: 1,
  direct: true,
  edges: [
    { edgeId: "edge-a", tenants: ["acme"] },
    { edgeId: "edge-b", tenants: ["acme"] },
  ],
});
const closers: (() => Promise<unknown>)[] = [() => fleet.destroy()];
try {
  const hub = await connect({ servers: fleet.hubUrls, user: fleet.hubUser.user, pass: fleet.hubUser.pass });
  closers.unshift(() => hub.close());
  await ensureHubStreams(await jetstreamManager(hub), { edges: [{ edgeId: "edge-a" }, { edgeId: "edge-b" }] });
  const common = { ...fleet.kernelUser, ensureHubStream: false, retryInitialMs: 100 };
  const a = startEdgePipeline({
    ...common,
    dbPath: tempDbPath(),
    natsUrl: fleet.edges["edge-a"]!.leaf.url,
    edgeId: "edge-a",
    edgeDomain: "edge-a",
    federation: [{ edge: "edge-b", outboundTenants: ["acme"], inboundTenants: [] }],
  });
  closers.unshift(() => a.close());
  const b = startEdgePipeline({
    ...common,
    dbPath: tempDbPath(),
    natsUrl: fleet.edges["edge-b"]!.leaf.url,
    edgeId: "edge-b",
    edgeDomain: "edge-b",
    federation: [{ edge: "edge-a", outboundTenants: [], inboundTenants: ["acme"] }],
  });
  closers.unshift(() => b.close());
  await waitFor(() => b.bus.connection() !== undefined, "B connected", 60_000, 100);
  const ctrl = new AbortController();
  const sub = subscribeOn(b, ctrl.signal);
  closers.unshift(async () => {
    ctrl.abort();
    await sub.done;
  });

  // Warm-up: the first events cross once every link, source consumer and JIT path is up.
  const warm: string[] = [];
  for (let i = 0; i < WARMUP; i++)
    warm.push((await a.publish({ tenant: "acme", subject: "orders.warmup.v1", payload: PAYLOAD })).eventId);
  await waitFor(() => warm.every((id) => sub.at.has(id)), "warm-up events on B", 120_000, 50);

  // 1) Through the kernels: Publish acknowledged at A -> delivered to B's subscriber.
  const ackAt = new Map<string, number>();
  const ackWall = new Map<string, number>();
  const publishMs: number[] = [];
  const errors: unknown[] = [];
  const inflight: Promise<void>[] = [];
  const sent = await steady(() => {
    const t0 = performance.now();
    inflight.push(
      a.publish({ tenant: "acme", subject: "orders.created.v1", payload: PAYLOAD }).then(
        (r) => {
          const t1 = performance.now();
          publishMs.push(t1 - t0);
          ackAt.set(r.eventId, t1);
          ackWall.set(r.eventId, wallNow());
        },
        (err: unknown) => {
          errors.push(err);
        },
      ),
    );
  });
  await Promise.all(inflight);
  await waitFor(() => [...ackAt.keys()].every((id) => sub.at.has(id)), "every event on B", 300_000, 50);
  const kernel = summary([...ackAt].map(([id, t]) => sub.at.get(id)! - t));
  const publish = summary(publishMs);
  const receivedWall = new Map([...ackAt.keys()].map((id) => [id, performance.timeOrigin + sub.at.get(id)!]));

  // Where the time goes: when each measured event was stored at each hop (server clocks, the same
  // machine), as an offset from its Publish ack at A.
  const ids = new Set(ackAt.keys());
  const hubJs = jetstream(hub);
  const hops: [string, Map<string, number>][] = [
    ["A NOPS_EVENTS (relay PubAck)", await storedAt(a.bus.jetstream()!, "NOPS_EVENTS", ids)],
    ["A NOPS_FED_OUT (forwarder)", await storedAt(a.bus.jetstream()!, "NOPS_FED_OUT", ids)],
    ["hub NOPS_FED (sourced from A)", await storedAt(hubJs, "NOPS_FED", ids)],
    ["B NOPS_FED_IN (sourced from the hub)", await storedAt(b.bus.jetstream()!, "NOPS_FED_IN", ids)],
    ["B NOPS_EVENTS (delivered in)", await storedAt(b.bus.jetstream()!, "NOPS_EVENTS", ids)],
    ["B subscriber", receivedWall],
  ];

  // 2) Baseline: plain NATS, a client on A's leaf -> a subscriber on B's leaf, same hub and links.
  const onA = await connect({ servers: fleet.edges["edge-a"]!.leaf.url, ...fleet.kernelUser });
  const onB = await connect({ servers: fleet.edges["edge-b"]!.leaf.url, ...fleet.kernelUser });
  closers.unshift(() => Promise.all([onA.close(), onB.close()]));
  const sentAt: number[] = [];
  const gotAt = new Map<number, number>();
  onB.subscribe("$JSC.R.nopsbench.>", {
    callback: (_err, m) => {
      const n = Number(m.subject.slice("$JSC.R.nopsbench.".length));
      if (!gotAt.has(n)) gotAt.set(n, performance.now());
    },
  });
  await onB.flush();
  await waitFor(
    async () => {
      onA.publish("$JSC.R.nopsbench.-1", PAYLOAD);
      await onA.flush();
      return gotAt.has(-1);
    },
    "B's interest across the hub",
    60_000,
    100,
  );
  const baseSent = await steady((i) => {
    sentAt[i] = performance.now();
    onA.publish(`$JSC.R.nopsbench.${i}`, PAYLOAD);
  });
  await onA.flush();
  await waitFor(() => gotAt.size >= baseSent + 1, "every baseline message on B", 120_000, 50).catch(() => undefined);
  const base = summary(sentAt.flatMap((t, i) => (gotAt.has(i) ? [gotAt.get(i)! - t] : [])));
  const lost = baseSent - base.n;

  console.log(
    `edge -> hub -> edge latency: ${RATE} msg/s open loop for ${SECONDS} s, ${PAYLOAD.length}-byte payloads, ` +
      `2 edge kernels + 1 hub, nats-server 2.9.10 on loopback, per-edge users and permissions`,
  );
  console.log(line("kernel A Publish ack -> kernel B subscriber", kernel));
  console.log(line("  (A's Publish: call -> ack, the SQLite commit)", publish));
  console.log("  from A's Publish ack to stored at each hop (offsets, ms):");
  for (const [name, at] of hops)
    console.log(line(`    ${name}`, summary([...at].map(([id, t]) => t - ackWall.get(id)!))));
  console.log(line("plain NATS A leaf -> hub -> B leaf subscriber (baseline)", base));
  console.log(
    `  ratio kernel/baseline: p50 ${fmt(kernel.p50 / base.p50)}x  p99 ${fmt(kernel.p99 / base.p99)}x` +
      `  (sent ${sent}, Publish errors ${errors.length}; baseline sent ${baseSent}, not received ${lost})`,
  );
  if (errors.length > 0 || kernel.n !== sent) process.exitCode = 1;
} finally {
  for (const c of closers) await c().catch(() => undefined);
}
