import { fromBinary } from "@bufbuild/protobuf";
import {
  DeliverPolicy,
  DiscardPolicy,
  RetentionPolicy,
  StorageType,
  type ConsumerMessages,
  type JetStreamClient,
  type JetStreamManager,
  type JsMsg,
} from "@nats-io/jetstream";
import { headers as natsHeaders } from "@nats-io/nats-core";
import type { Meter } from "@opentelemetry/api";
import { ConfigError, EDGE_ID_PATTERN, TENANT_PATTERN, type Clock, type TimerHandle } from "../common/index.js";
import type { Db } from "../store/index.js";
import type { Logger } from "../telemetry/index.js";
import { EventEnvelopeSchema } from "../../gen/nops/events/v1/envelope_pb.js";
import {
  BUS_STREAMS,
  createStreamProgress,
  ensureStream,
  federatedSubject,
  oldestAfter,
  sourceLink,
} from "./hub-streams.js";
import { edgeDeliverPrefix } from "./nats-config.js";
import type { PrePublishHook } from "./outbox-relay.js";

/** One peer edge events are exchanged with (config `events.federation[]`, or a peer's agreement). */
export interface FederationLink {
  /** The peer's edge id. */
  edge: string;
  /** Tenants whose events this edge sends to the peer. */
  outboundTenants: string[];
  /** Tenants whose events this edge accepts from the peer. */
  inboundTenants: string[];
}

/** The link of an established federation peer: edge = its kernel id, tenants = its agreement's. */
export interface PeerEventLink extends FederationLink {
  /** The peer's SPIFFE ID (logs). */
  peer: string;
}

/** Header on an event that arrived from another edge: its source edge (never forwarded again). */
export const FEDERATED_FROM_HEADER = "Nops-Fed-Source";

/** Messages of one federation direction awaiting their PubAcks at once (like the relay's maxInFlight). */
export const FOLLOW_WINDOW = 256;
/**
 * How long acknowledged progress may wait before it is written: a crash replays at most this much,
 * which the target streams' duplicate window drops (their message ids are stable).
 */
export const PROGRESS_FLUSH_MS = 50;

/** Validates `events.federation`; throws ConfigError naming the field. */
export function resolveFederationLinks(input: unknown, edgeId: string, path = "events.federation"): FederationLink[] {
  if (input === undefined) return [];
  if (!Array.isArray(input)) throw new ConfigError(`${path} must be a list of {edge, outboundTenants, inboundTenants}`);
  const seen = new Set<string>();
  return input.map((raw: unknown, i) => {
    const at = `${path}[${i}]`;
    if (typeof raw !== "object" || raw === null) throw new ConfigError(`${at} must be an object`);
    const r = raw as Record<string, unknown>;
    if (typeof r.edge !== "string" || !EDGE_ID_PATTERN.test(r.edge))
      throw new ConfigError(`${at}.edge must match ${EDGE_ID_PATTERN}`);
    if (r.edge === edgeId) throw new ConfigError(`${at}.edge is this edge`);
    if (seen.has(r.edge)) throw new ConfigError(`${at}.edge ${r.edge} is listed twice`);
    seen.add(r.edge);
    const tenants = (field: "outboundTenants" | "inboundTenants"): string[] => {
      const v = r[field] ?? [];
      if (!Array.isArray(v)) throw new ConfigError(`${at}.${field} must be a list of tenant ids`);
      v.forEach((t: unknown, j) => {
        if (typeof t !== "string" || !TENANT_PATTERN.test(t))
          throw new ConfigError(`${at}.${field}[${j}] is not a tenant id`);
      });
      return [...new Set(v as string[])];
    };
    return { edge: r.edge, outboundTenants: tenants("outboundTenants"), inboundTenants: tenants("inboundTenants") };
  });
}

/** Settings of event federation (a subset of EventBusOptions). */
export interface EventFederationOptions {
  edgeId: string;
  hubDomain: string;
  streamName: string;
  duplicateWindowMs: number;
  streamMaxAgeMs: number;
  retryInitialMs: number;
  retryMaxMs: number;
  /** The static links (events.federation); they win over a peer's link to the same edge. */
  federation: FederationLink[];
}

/** Where federation stands (GetStatus, metrics). */
export interface EventFederationStatus {
  /** Edge events forwarded to NOPS_FED_OUT, by the local NOPS_EVENTS sequence last examined. */
  outSeq: number;
  forwarded: number;
  /** Refused by the Egress Guard at this edge. */
  blocked: number;
  /** NOPS_FED_IN sequence last delivered into NOPS_EVENTS. */
  inSeq: number;
  delivered: number;
  /** Arrived from a peer or tenant no link allows: dropped and counted. */
  rejected: number;
  /** Federated events at the hub not yet sourced by this edge (the hub -> edge link's lag). */
  inLinkLag: number;
  inLinkIdleMs?: number;
  /** Events in NOPS_EVENTS not yet examined for forwarding / in NOPS_FED_IN not yet delivered. */
  outPending: number;
  inPending: number;
  /** When the oldest such event was stored on the leaf, when there is one. */
  outOldestAt?: number;
  inOldestAt?: number;
  /** When each side last handled an event. */
  outLastAt?: number;
  inLastAt?: number;
}

/** Kernel -> kernel events through the hub (docs/events.md, "Kernel -> kernel events"). */
export interface EventFederation {
  /** Whether any link is in effect now. */
  readonly enabled: boolean;
  /**
   * Waits for a link, creates the edge's federation streams, then forwards out and delivers in
   * until stop(), each side resuming after its persisted sequence. Once started it runs on
   * without links, so what no link allowed while it ran is never sent or delivered later.
   */
  run(js: JetStreamClient, jsm: JetStreamManager): Promise<void>;
  stop(): void;
  /** Replaces the peers' links; takes effect from the next event each direction examines. */
  setPeerLinks(links: readonly PeerEventLink[]): void;
  /** The links in effect: the static ones, then the peers' that do not conflict. */
  links(): readonly FederationLink[];
  refresh(jsm: JetStreamManager): Promise<void>;
  status(): EventFederationStatus;
}

// nops.events.<tenant>.<type...> / nops.fed.<edge>.<tenant>.<type...>
function splitSubject(subject: string, prefixTokens: number): { tenant: string; type: string } | undefined {
  const parts = subject.split(".");
  if (parts.length < prefixTokens + 2) return undefined;
  return { tenant: parts[prefixTokens]!, type: parts.slice(prefixTokens + 1).join(".") };
}

/** Creates event federation with the static links; peers' links come and go through setPeerLinks. */
export function createEventFederation(
  deps: { db: Db; clock: Clock; logger: Logger; meter: Meter; prePublish?: PrePublishHook },
  options: EventFederationOptions,
): EventFederation {
  const { db, clock, logger } = deps;
  const staticEdges = new Set(options.federation.map((l) => l.edge));
  // Read by each message's plan: a change applies from the next message examined.
  let links: readonly FederationLink[] = options.federation;
  // Resolves run()'s wait for a first link (set while it waits).
  let wakeRun: (() => void) | undefined;
  // A conflict is logged when it appears, not on every registry change.
  let conflicts = new Set<string>();
  const OUT_KEY = `${options.streamName}->${BUS_STREAMS.edgeFedOut}`;
  const IN_KEY = `${BUS_STREAMS.edgeFedIn}->${options.streamName}`;
  const positions = createStreamProgress(db);
  const progress = (key: string): number => positions.get(key)?.lastSeq ?? 0;
  const counters = { forwarded: 0, blocked: 0, delivered: 0, rejected: 0 };
  let inLinkLag = 0;
  let inLinkIdleMs: number | undefined;
  const tails = {
    outLast: 0,
    inLast: 0,
    outOldestAt: undefined as number | undefined,
    inOldestAt: undefined as number | undefined,
  };
  const metric = deps.meter.createCounter("nops_events_federation", {
    description: "Kernel -> kernel events, by outcome (forwarded | blocked | delivered | rejected)",
  });
  const count = (outcome: keyof typeof counters, n = 1) => {
    counters[outcome] += n;
    metric.add(n, { outcome });
  };
  let stopped = false;
  const running = new Set<ConsumerMessages>();

  // Each message is planned in order (the Egress Guard's verdicts), then its publishes are sent at
  // once and acknowledged in the background: up to FOLLOW_WINDOW messages await their PubAcks, and
  // the progress row (one fsync'd write) is written at most every PROGRESS_FLUSH_MS for every
  // message acknowledged in order, and when the direction stops.
  // A replay after a failure or a crash re-publishes with the same message ids, which the target
  // stream's duplicate window drops.
  type Send = () => Promise<void>;

  async function planOut(js: JetStreamClient, m: JsMsg): Promise<Send> {
    // Events that came from another edge are delivered here, never sent on (no loops).
    if (m.headers?.has(FEDERATED_FROM_HEADER)) return () => Promise.resolve();
    const parsed = splitSubject(m.subject, 2);
    const out: { subject: string; headers: Record<string, string>; msgID: string }[] = [];
    for (const link of links) {
      if (!parsed || !link.outboundTenants.includes(parsed.tenant)) continue;
      const subject = federatedSubject(link.edge, parsed.tenant, parsed.type);
      const hdrs: Record<string, string> = {};
      for (const [k, v] of m.headers ?? []) if (v[0] !== undefined) hdrs[k] = v[0];
      const verdict = deps.prePublish ? await deps.prePublish(subject, m.data, hdrs) : { allowed: true };
      if (!verdict.allowed && verdict.retryLater)
        throw new Error(`egress guard has no verdict (${verdict.reason ?? "no answer"})`);
      if (!verdict.allowed) {
        count("blocked");
        logger.warn({ seq: m.seq, edge: link.edge, reason: verdict.reason }, "egress guard blocked a federated event");
        continue;
      }
      out.push({ subject, headers: hdrs, msgID: `${options.edgeId}:fed:${link.edge}:${m.seq}` });
    }
    return async () => {
      await Promise.all(
        out.map((o) => {
          const h = natsHeaders();
          for (const [k, v] of Object.entries(o.headers)) if (!k.startsWith("Nats-")) h.set(k, v);
          return js.publish(o.subject, m.data, { msgID: o.msgID, headers: h });
        }),
      );
      if (out.length > 0) count("forwarded", out.length);
    };
  }

  async function planIn(js: JetStreamClient, m: JsMsg): Promise<Send> {
    const parsed = splitSubject(m.subject, 3);
    let source = "";
    let id = "";
    try {
      const envelope = fromBinary(EventEnvelopeSchema, m.data);
      source = envelope.source;
      id = envelope.id;
    } catch {
      // counted as rejected below
    }
    const link = links.find((l) => l.edge === source);
    if (!parsed || id === "" || !link || !link.inboundTenants.includes(parsed.tenant)) {
      count("rejected");
      logger.warn({ seq: m.seq, source, tenant: parsed?.tenant }, "federated event not allowed by any link; dropped");
      return () => Promise.resolve();
    }
    const h = natsHeaders();
    for (const [k, v] of m.headers ?? []) if (!k.startsWith("Nats-") && v[0] !== undefined) h.set(k, v[0]);
    h.set(FEDERATED_FROM_HEADER, source);
    return async () => {
      // The message id is the source's envelope id: a redelivery after a partition stores nothing twice.
      await js.publish(`nops.events.${parsed.tenant}.${parsed.type}`, m.data, {
        msgID: `fed:${source}:${id}`,
        headers: h,
      });
      count("delivered");
    };
  }

  async function follow(
    js: JetStreamClient,
    stream: string,
    key: string,
    plan: (js: JetStreamClient, m: JsMsg) => Promise<Send>,
  ): Promise<void> {
    let delay = options.retryInitialMs;
    while (!stopped) {
      let msgs: ConsumerMessages | undefined;
      // Sent and not yet acknowledged, in stream order.
      const pending: { seq: number; done: boolean; acked: Promise<void> }[] = [];
      // Set by a publish that failed, from its callback (read through failure(): it changes across awaits).
      const failed: { error?: Error } = {};
      const failure = (): Error | undefined => failed.error;
      let wake: (() => void) | undefined;
      // `handled`: every message up to it is acknowledged; `written`: what the progress row says.
      let handled = progress(key);
      let written = handled;
      let flushTimer: TimerHandle | undefined;
      const flush = (): void => {
        clock.clearTimeout(flushTimer);
        flushTimer = undefined;
        if (handled > written) {
          positions.set(key, handled, clock.now());
          written = handled;
        }
      };
      const advance = (): void => {
        while (pending[0]?.done) handled = pending.shift()!.seq;
        if (flushTimer === undefined && handled > written) flushTimer = clock.setTimeout(flush, PROGRESS_FLUSH_MS);
      };
      try {
        const consumer = await js.consumers.get(stream, {
          deliver_policy: DeliverPolicy.StartSequence,
          opt_start_seq: handled + 1,
        });
        msgs = await consumer.consume();
        running.add(msgs);
        if (stopped) msgs.stop();
        let queued = handled;
        for await (const m of msgs) {
          const early = failure();
          if (early) throw early;
          if (m.seq <= queued) continue;
          const send = await plan(js, m);
          const entry = { seq: m.seq, done: false, acked: Promise.resolve() };
          entry.acked = send().then(
            () => {
              entry.done = true;
              advance();
              wake?.();
            },
            (err: unknown) => {
              failed.error ??= err instanceof Error ? err : new Error(String(err));
              wake?.();
            },
          );
          pending.push(entry);
          queued = m.seq;
          while (pending.length >= FOLLOW_WINDOW && !failure()) await new Promise<void>((resolve) => (wake = resolve));
          const late = failure();
          if (late) throw late;
          delay = options.retryInitialMs;
        }
      } catch (err) {
        if (!stopped)
          logger.warn(
            { err, stream, retryMs: delay },
            "event federation paused; resuming after the last handled event",
          );
      } finally {
        if (msgs) {
          msgs.stop();
          running.delete(msgs);
        }
        // What was sent settles first, so the progress row covers every acknowledged message.
        await Promise.all(pending.map((p) => p.acked));
        advance();
        flush();
      }
      if (stopped) return;
      await clock.sleep(delay);
      delay = Math.min(delay * 2, options.retryMaxMs);
    }
  }

  async function ensureStreams(jsm: JetStreamManager): Promise<void> {
    await ensureStream(jsm, {
      name: BUS_STREAMS.edgeFedOut,
      subjects: ["nops.fed.>"],
      storage: StorageType.File,
      retention: RetentionPolicy.Limits,
      discard: DiscardPolicy.New,
      max_age: options.streamMaxAgeMs * 1_000_000,
      duplicate_window: options.duplicateWindowMs * 1_000_000,
    });
    await ensureStream(jsm, {
      name: BUS_STREAMS.edgeFedIn,
      storage: StorageType.File,
      retention: RetentionPolicy.Limits,
      max_age: options.streamMaxAgeMs * 1_000_000,
      sources: [
        {
          name: BUS_STREAMS.hubFed,
          filter_subject: `nops.fed.${options.edgeId}.>`,
          external: { api: `$JS.${options.hubDomain}.API`, deliver: edgeDeliverPrefix(options.edgeId) },
        },
      ],
    });
  }

  return {
    get enabled() {
      return links.length > 0;
    },
    async run(js, jsm) {
      stopped = false;
      while (!stopped && links.length === 0) await new Promise<void>((resolve) => (wakeRun = resolve));
      wakeRun = undefined;
      let delay = options.retryInitialMs;
      while (!stopped) {
        try {
          await ensureStreams(jsm);
          break;
        } catch (err) {
          logger.warn({ err, retryMs: delay }, "event federation streams not created; retrying");
          await clock.sleep(delay);
          delay = Math.min(delay * 2, options.retryMaxMs);
        }
      }
      if (stopped) return;
      await Promise.all([
        follow(js, options.streamName, OUT_KEY, planOut),
        follow(js, BUS_STREAMS.edgeFedIn, IN_KEY, planIn),
      ]);
    },
    stop() {
      stopped = true;
      wakeRun?.();
      for (const m of running) m.stop();
    },
    setPeerLinks(peerLinks) {
      const claims = new Map<string, number>();
      for (const l of peerLinks) claims.set(l.edge, (claims.get(l.edge) ?? 0) + 1);
      const seen = new Set<string>();
      const refuse = (l: PeerEventLink, why: string): false => {
        const key = `${l.peer} ${l.edge} ${why}`;
        seen.add(key);
        if (!conflicts.has(key)) logger.warn({ peer: l.peer, edge: l.edge }, `peer gets no event link: ${why}`);
        return false;
      };
      const derived = peerLinks.filter((l) => {
        if (staticEdges.has(l.edge)) return refuse(l, "events.federation names its edge (the static link wins)");
        if (l.edge === options.edgeId) return refuse(l, "its kernel id is this edge's id");
        if (claims.get(l.edge)! > 1) return refuse(l, "another established peer has the same kernel id");
        return true;
      });
      conflicts = seen;
      const next = [
        ...options.federation,
        ...derived.map(({ edge, outboundTenants, inboundTenants }) => ({ edge, outboundTenants, inboundTenants })),
      ];
      if (JSON.stringify(next) === JSON.stringify(links)) return;
      links = next;
      logger.info({ links }, "event federation links changed");
      wakeRun?.();
    },
    links: () => links,
    async refresh(jsm) {
      if (links.length === 0) return;
      tails.outLast = (await jsm.streams.info(options.streamName)).state.last_seq;
      tails.outOldestAt = await oldestAfter(jsm, options.streamName, progress(OUT_KEY), tails.outLast);
      const inInfo = await jsm.streams.info(BUS_STREAMS.edgeFedIn);
      tails.inLast = inInfo.state.last_seq;
      tails.inOldestAt = await oldestAfter(jsm, BUS_STREAMS.edgeFedIn, progress(IN_KEY), tails.inLast);
      const link = sourceLink(inInfo);
      if (link) ({ lag: inLinkLag, idleMs: inLinkIdleMs } = link);
    },
    status() {
      const out = positions.get(OUT_KEY);
      const inn = positions.get(IN_KEY);
      const outSeq = out?.lastSeq ?? 0;
      const inSeq = inn?.lastSeq ?? 0;
      return {
        outSeq,
        inSeq,
        ...counters,
        inLinkLag,
        inLinkIdleMs,
        outPending: Math.max(0, tails.outLast - outSeq),
        inPending: Math.max(0, tails.inLast - inSeq),
        outOldestAt: outSeq < tails.outLast ? tails.outOldestAt : undefined,
        inOldestAt: inSeq < tails.inLast ? tails.inOldestAt : undefined,
        outLastAt: out?.updatedAt,
        inLastAt: inn?.updatedAt,
      };
    },
  };
}
