import type { JetStreamClient } from "@nats-io/jetstream";
import { headers as natsHeaders } from "@nats-io/nats-core";
import { fromBinary } from "@bufbuild/protobuf";
import { EventEnvelopeSchema, type EventEnvelope } from "../../gen/nops/events/v1/envelope_pb.js";
import { SpanStatusCode, type Meter, type Tracer } from "@opentelemetry/api";
import { startProducerSpan, type Logger } from "../telemetry/index.js";
import {
  checkEnvelope,
  type OutboxStore,
  type PublicationReceipt,
  type TenantEventSchemas,
  type UnpublishedRow,
} from "../store/index.js";
import type { Clock } from "../common/index.js";

/** Verdict of the egress guard on an event about to cross to the hub. */
export interface PrePublishVerdict {
  allowed: boolean;
  reason?: string;
  /**
   * No verdict could be had (the DGE did not answer): the event is neither published nor
   * blocked; the relay pauses and asks again after its backoff.
   */
  retryLater?: boolean;
}

// The row's envelope, or why it may not be published (it does not decode, its type has no registered schema).
function readEnvelope(row: UnpublishedRow, tenantSchemas: TenantEventSchemas): EventEnvelope | string {
  let envelope: EventEnvelope;
  try {
    envelope = fromBinary(EventEnvelopeSchema, row.envelope);
  } catch (err) {
    return `envelope does not decode: ${err instanceof Error ? err.message : String(err)}`;
  }
  return checkEnvelope(envelope, tenantSchemas) ?? envelope;
}

/** The Egress Guard's hook, called before every event that crosses to the hub. */
export type PrePublishHook = (
  subject: string,
  payload: Uint8Array,
  headers: Record<string, string>,
) => Promise<PrePublishVerdict>;

/** A row the leaf stream acknowledged. */
export type PublishedRow = PublicationReceipt;

/** Dependencies of the relay. */
export interface OutboxRelayDeps {
  outbox: OutboxStore;
  clock: Clock;
  logger: Logger;
  meter: Meter;
  /** The current JetStream client, undefined while NATS is not connected. */
  jetstream(): JetStreamClient | undefined;
  /** Egress Guard hook; when absent every event is allowed. */
  prePublish?: PrePublishHook;
  /** Called as each PubAck arrives, before the receipt is recorded (the bench measures publish->leaf with it). */
  onPublished?: (row: PublishedRow) => void;
  /** When tracing is on: one producer span per publish, child of the event's trace. */
  tracer?: Tracer;
  /**
   * Records PubAcks. @default `outbox.recordPublished`; the kernel hands them to the Publish writer thread, so
   * this connection does not wait for the write lock that thread holds through its commits.
   */
  recordPublished?: (receipts: readonly PublicationReceipt[], now: number) => void;
}

/** Relay settings (a subset of EventBusOptions). */
export interface OutboxRelayOptions {
  edgeId: string;
  maxInFlight: number;
  batchSize: number;
  pollIntervalMs: number;
  retryInitialMs: number;
  retryMaxMs: number;
  publishTimeoutMs: number;
  /** Tenant event types and their payload types (EventBusOptions.schemas). @default {} */
  schemas?: TenantEventSchemas;
}

/** Why the relay is not publishing, if it is not. */
export type RelayProblem = { kind: "stream-full" | "unreachable" | "no-verdict"; reason: string } | undefined;

/** Publishes outbox rows to the leaf stream, at most maxInFlight at once, in outbox order. */
export interface OutboxRelay {
  start(): void;
  /** Stops taking rows and waits for in-flight publishes to settle and be recorded. */
  stop(): Promise<void>;
  /** Wakes the relay now (a writer just committed rows). */
  kick(): void;
  /** The current publishing problem, undefined when publishing works (or there is nothing to do). */
  problem(): RelayProblem;
  /** Rows not yet acknowledged by the leaf stream (blocked rows excluded). */
  depth(): number;
  /** Rows the egress guard blocked: kept, never published, visible here until released. */
  listBlocked(limit?: number): { outboxId: number; subject: string; reason: string; blockedAt: number }[];
  /** Lets a blocked row be evaluated again (e.g. after the policy changed). */
  releaseBlocked(outboxId: number): boolean;
  /** Forgets receipts above `lastSeq` (the leaf stream lost them), so those rows are published again. */
  reconcileStreamTail(lastSeq: number): number;
}

const STREAM_FULL = /maximum (messages|bytes)|insufficient resources|resource limits exceeded/i;

/** Message id of an outbox row in the edge stream: "<edge-id>:<outbox-id>" (docs/events.md). */
export function outboxMessageId(edgeId: string, outboxId: number): string {
  return `${edgeId}:${outboxId}`;
}

/** Creates the outbox relay. */
export function createOutboxRelay(deps: OutboxRelayDeps, options: OutboxRelayOptions): OutboxRelay {
  const { outbox, clock, logger } = deps;
  const recordPublished = deps.recordPublished ?? ((receipts, now) => outbox.recordPublished(receipts, now));
  const latency = deps.meter.createHistogram("nops_events_publish_latency", {
    description: "Time from outbox commit to the leaf stream's PubAck",
    unit: "ms",
  });
  const published = deps.meter.createCounter("nops_events_relay_published", {
    description: "Outbox rows acknowledged by the leaf stream",
  });
  const blockedCounter = deps.meter.createCounter("nops_events_relay_blocked", {
    description: "Outbox rows the egress guard blocked",
  });
  const schemaRefused = deps.meter.createCounter("nops_events_relay_schema_refused", {
    description: "Outbox rows the relay refused because their type has no registered schema",
  });
  deps.meter
    .createObservableGauge("nops_events_outbox_depth", {
      description: "Outbox rows not yet acknowledged by the leaf stream",
    })
    .addCallback((r) => r.observe(relay.depth()));
  deps.meter
    .createObservableGauge("nops_events_relay_lag", {
      description: "Age of the oldest unpublished outbox row",
      unit: "ms",
    })
    .addCallback((r) => {
      const t = outbox.oldestUnpublishedAt();
      r.observe(t === undefined ? 0 : Math.max(0, clock.now() - t));
    });

  let running = false;
  let loopDone: Promise<void> = Promise.resolve();
  let wake: (() => void) | undefined;
  let inFlight = 0;
  let cursor = 0;
  let failure: RelayProblem;
  let current: RelayProblem;
  let retryMs = options.retryInitialMs;
  let pendingAcks: { row: PublishedRow; createdAt: number }[] = [];
  let flushScheduled = false;

  const kick = (): void => {
    const w = wake;
    wake = undefined;
    w?.();
  };
  const sleep = (ms: number): Promise<void> =>
    new Promise((resolve) => {
      const timer = clock.setTimeout(() => {
        wake = undefined;
        resolve();
      }, ms);
      wake = () => {
        clock.clearTimeout(timer);
        resolve();
      };
    });

  const flushAcks = (): void => {
    flushScheduled = false;
    if (pendingAcks.length === 0) return;
    const batch = pendingAcks;
    pendingAcks = [];
    const now = clock.now();
    // One transaction per batch of PubAcks, committed without a WAL fsync (OutboxStore.recordPublished).
    recordPublished(
      batch.map((b) => b.row),
      now,
    );
    for (const b of batch) latency.record(Math.max(0, now - b.createdAt));
    published.add(batch.length);
  };

  const publishRow = (js: JetStreamClient, row: UnpublishedRow, envelope: EventEnvelope): void => {
    const h = natsHeaders();
    for (const [k, v] of Object.entries(row.headers)) h.set(k, v);
    // W3C trace context rides on the message too, so the hub and consumers continue the trace
    // of the operation that wrote the event without decoding the envelope.
    const traceparent = envelope.traceparent || undefined;
    const producer = deps.tracer && startProducerSpan(deps.tracer, row.subject, traceparent);
    for (const [k, v] of Object.entries(producer?.headers ?? (traceparent ? { traceparent } : {})))
      if (!h.has(k)) h.set(k, v);
    inFlight++;
    js.publish(row.subject, row.envelope, {
      msgID: outboxMessageId(options.edgeId, row.id),
      headers: h,
      timeout: options.publishTimeoutMs,
    })
      .then((ack) => {
        producer?.span.end();
        const acked = { outboxId: row.id, streamSeq: ack.seq };
        deps.onPublished?.(acked);
        pendingAcks.push({ row: acked, createdAt: row.createdAt });
        // Publishing works again: the relay is draining, no longer degraded.
        if (!failure) {
          current = undefined;
          retryMs = options.retryInitialMs;
        }
        if (!flushScheduled) {
          flushScheduled = true;
          setImmediate(flushAcks);
        }
      })
      .catch((err: unknown) => {
        const message = err instanceof Error ? err.message : String(err);
        producer?.span.setStatus({ code: SpanStatusCode.ERROR, message });
        producer?.span.end();
        failure ??= STREAM_FULL.test(message)
          ? { kind: "stream-full", reason: `edge stream full: ${message}` }
          : { kind: "unreachable", reason: `publish failed: ${message}` };
      })
      .finally(() => {
        inFlight--;
        kick();
      });
  };

  async function pass(js: JetStreamClient): Promise<boolean> {
    const rows = outbox.unpublished(cursor, Math.min(options.batchSize, options.maxInFlight - inFlight));
    if (rows.length === 0) return false;
    for (const row of rows) {
      if (!running || failure) break;
      const envelope = readEnvelope(row, options.schemas ?? {});
      if (typeof envelope === "string") {
        const problem = envelope;
        // Nothing without a registered schema leaves the edge: the row is kept as blocked (listed
        // through listBlocked, like the guard's) instead of reaching consumers that cannot decode it.
        outbox.block(row.id, `schema: ${problem}`, clock.now());
        schemaRefused.add(1);
        logger.error({ outboxId: row.id, reason: problem }, "relay refused an event without a registered schema");
        cursor = row.id;
        continue;
      }
      if (deps.prePublish) {
        const verdict = await deps.prePublish(row.subject, row.envelope, row.headers);
        if (!verdict.allowed && verdict.retryLater) {
          // An acknowledged event is never held for good because the DGE was away: it waits in
          // the outbox, in order, until a verdict can be had.
          failure ??= { kind: "no-verdict", reason: `egress guard has no verdict (${verdict.reason ?? "no answer"})` };
          break;
        }
        if (!verdict.allowed) {
          // A blocked event is kept (never pruned: it is never published nor confirmed) and
          // listed through listBlocked(); operators release it or leave it as evidence.
          outbox.block(row.id, verdict.reason ?? "blocked by egress guard", clock.now());
          blockedCounter.add(1);
          // Not the subject: it may be what the guard found data in (listBlocked names it).
          logger.warn({ outboxId: row.id, reason: verdict.reason }, "egress guard blocked an event");
          cursor = row.id;
          continue;
        }
      }
      cursor = row.id;
      publishRow(js, row, envelope);
      while (running && !failure && inFlight >= options.maxInFlight) await sleep(options.publishTimeoutMs);
    }
    return true;
  }

  async function loop(): Promise<void> {
    while (running) {
      if (failure) {
        // Let everything in flight settle, record what was acknowledged, then start again from
        // the lowest unacknowledged row; re-published rows are deduplicated by Nats-Msg-Id.
        while (inFlight > 0) await sleep(options.publishTimeoutMs);
        flushAcks();
        current = failure;
        failure = undefined;
        cursor = 0;
        logger.warn({ reason: current.reason, retryMs }, "relay paused");
        await sleep(retryMs);
        retryMs = Math.min(retryMs * 2, options.retryMaxMs);
        continue;
      }
      const js = deps.jetstream();
      if (!js) {
        current = { kind: "unreachable", reason: "NATS leaf node not connected" };
        cursor = 0;
        await sleep(options.pollIntervalMs);
        continue;
      }
      let worked = false;
      try {
        worked = await pass(js);
      } catch (err) {
        failure ??= { kind: "unreachable", reason: `relay error: ${err instanceof Error ? err.message : String(err)}` };
        continue;
      }
      if (!worked) {
        // Connected with nothing to publish: nothing is wrong (a stale problem would otherwise
        // linger when the outbox was empty at recovery).
        if (inFlight === 0 && !failure) current = undefined;
        await sleep(options.pollIntervalMs);
      }
    }
  }

  const relay: OutboxRelay = {
    start() {
      if (running) return;
      running = true;
      cursor = 0;
      loopDone = loop().catch((err: unknown) => logger.error({ err }, "relay loop crashed"));
    },
    async stop() {
      running = false;
      kick();
      await loopDone;
      // A bound on real I/O (publishes in flight), so real time even under a manual clock.
      const deadline = Date.now() + options.publishTimeoutMs + 1000;
      while (inFlight > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
      flushAcks();
    },
    kick,
    problem: () => current,
    depth: () => outbox.depth(),
    listBlocked: (limit = 100) => outbox.listBlocked(limit),
    releaseBlocked(outboxId) {
      const released = outbox.releaseBlocked(outboxId);
      if (released) {
        cursor = 0;
        kick();
      }
      return released;
    },
    reconcileStreamTail(lastSeq) {
      const rows = outbox.unpublishAbove(lastSeq);
      if (rows === 0) return 0;
      logger.warn({ rows, lastSeq }, "leaf stream lost acknowledged messages; republishing them");
      cursor = 0;
      kick();
      return rows;
    },
  };
  return relay;
}
