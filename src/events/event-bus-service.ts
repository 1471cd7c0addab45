import { createHash } from "node:crypto";
import { create, fromBinary } from "@bufbuild/protobuf";
import { timestampFromMs, durationMs, type Duration } from "@bufbuild/protobuf/wkt";
import { ConnectError, type HandlerContext, type ServiceImpl } from "@connectrpc/connect";
import {
  AckPolicy,
  DeliverPolicy as JsDeliverPolicy,
  type ConsumerConfig,
  type JsMsg,
  type MsgRequest,
} from "@nats-io/jetstream";
import { headers as natsHeaders, type MsgHdrs } from "@nats-io/nats-core";
import {
  RESERVED_EVENT_NAMESPACES,
  callerHeaders,
  checkCallerEvent,
  eventSubject,
  type OutboxStore,
  type Transactor,
} from "../store/index.js";
import {
  type Clock,
  readBool,
  readInt,
  readObject,
  checkTenant,
  failedPrecondition,
  internalError,
  invalidArgument,
  notFound,
  unavailable,
} from "../common/index.js";
import { type Logger, contextFromTraceparent, currentTraceparent, startConsumerSpan } from "../telemetry/index.js";
import { EventEnvelopeSchema, Origin } from "../../gen/nops/events/v1/envelope_pb.js";
import {
  AckAction,
  DeadLetterReason,
  DeliverPolicy,
  type EventBusService,
  type DeadLetter,
  type DeliveredMessage,
  type ListDeadLettersRequest,
  type ListDeadLettersResponse,
  type PublishRequest,
  type ReprocessRequest,
  type ReprocessResponse,
  type PublishResponse,
  type SubscribeRequest,
} from "../../gen/nops/kernel/v1/event_bus_pb.js";
import { DeadLetterSchema, DeliveredMessageSchema } from "../../gen/nops/kernel/v1/event_bus_pb.js";
import type { EventBus } from "./event-bus.js";
import type { Tracer } from "@opentelemetry/api";
import { ROOT_CONTEXT, SpanKind, trace } from "@opentelemetry/api";
import type { PrePublishHook } from "./outbox-relay.js";
import { DLQ_HEADERS, deadLetterSubject } from "./dead-letter-mover.js";
import type { PublishWriteResult } from "./publish-batch.js";
import { createInlinePublishWriter, type CommitTiming, type PublishWriter } from "./publish-writer.js";

/** Options of the EventBusService handler. */
export interface EventBusServiceOptions {
  /** Largest Publish payload. @default 786432 (768 KiB, below NATS' 1 MiB max_payload with envelope and headers) */
  maxPayloadBytes: number;
  /** Most headers on one Publish. @default 32 */
  maxHeaders: number;
  /** Longest idempotency key. @default 128 */
  maxIdempotencyKeyLength: number;
  /** Ack RPC timeout waiting for the server's ack confirmation. @default 5000 */
  ackTimeoutMs: number;
  /**
   * Commit Publish calls on the writer thread (a database file only); false commits them on the event loop.
   * Off by default: on a two-core host the hand-off to the thread cost more latency than the fsync it moves
   * (bench/RESULTS.md); it pays where the event loop, not the cores, is the bottleneck.
   * @default false
   */
  writerThread: boolean;
  /** How long the Publish writer thread may sit idle before it exits (the next Publish starts it). @default 60000 */
  writerIdleMs: number;
}

/** @see EventBusServiceOptions.maxPayloadBytes */
export const DEFAULT_MAX_PAYLOAD_BYTES = 768 * 1024;
/** @see EventBusServiceOptions.maxHeaders */
export const DEFAULT_MAX_HEADERS = 32;
/** @see EventBusServiceOptions.maxIdempotencyKeyLength */
export const DEFAULT_MAX_IDEMPOTENCY_KEY_LENGTH = 128;
/** @see EventBusServiceOptions.ackTimeoutMs */
export const DEFAULT_ACK_TIMEOUT_MS = 5000;
/** @see EventBusServiceOptions.writerIdleMs */
export const DEFAULT_WRITER_IDLE_MS = 60_000;

/** Fills defaults and validates; throws ConfigError naming `<path>.<field>`. */
export function resolveEventBusServiceOptions(
  input: Partial<EventBusServiceOptions>,
  path = "events.service",
): EventBusServiceOptions {
  const s = readObject(input, path);
  return {
    maxPayloadBytes: readInt(s, "maxPayloadBytes", path, DEFAULT_MAX_PAYLOAD_BYTES, 1),
    maxHeaders: readInt(s, "maxHeaders", path, DEFAULT_MAX_HEADERS, 1),
    maxIdempotencyKeyLength: readInt(s, "maxIdempotencyKeyLength", path, DEFAULT_MAX_IDEMPOTENCY_KEY_LENGTH, 1),
    ackTimeoutMs: readInt(s, "ackTimeoutMs", path, DEFAULT_ACK_TIMEOUT_MS, 1),
    writerThread: readBool(s, "writerThread", path, false),
    writerIdleMs: readInt(s, "writerIdleMs", path, DEFAULT_WRITER_IDLE_MS, 100),
  };
}

/** Dependencies of the EventBusService handler. */
export interface EventBusServiceDeps {
  /** Where published events are written. */
  outbox: OutboxStore;
  /** Group commit: one transaction per batch, a savepoint per request (the default writer's). */
  transactor: Transactor;
  /**
   * Stores Publish calls. @default a writer on this thread's connection (`outbox`, `transactor`, the bus's
   * idempotency store); the kernel passes the writer thread (createThreadPublishWriter) for a database file.
   */
  writer?: PublishWriter;
  clock: Clock;
  logger: Logger;
  bus: EventBus;
  /** The Egress Guard hook, applied to Reprocess (the relay applies it to everything else). */
  prePublish?: PrePublishHook;
  /** When tracing is on: one consumer span per delivered message, continuing its trace. */
  tracer?: Tracer;
}

const TOKEN = /^[A-Za-z0-9_-]{1,64}$/;
const CONSUMER = /^[A-Za-z0-9_]{1,64}$/;
const HEADER_NAME = /^[A-Za-z0-9-]{1,64}$/;
const MAX_SUBJECT_TOKENS = 16;

function checkSubject(field: string, subject: string, wildcards: boolean): void {
  const tokens = subject.split(".");
  if (tokens.length > MAX_SUBJECT_TOKENS)
    throw invalidArgument(field, `must have at most ${MAX_SUBJECT_TOKENS} tokens`);
  tokens.forEach((t, i) => {
    if (TOKEN.test(t)) return;
    if (wildcards && (t === "*" || (t === ">" && i === tokens.length - 1))) return;
    throw invalidArgument(
      field,
      `must be dot-separated tokens of [A-Za-z0-9_-]${wildcards ? ' ("*" and a final ">" allowed)' : ""}`,
    );
  });
}

/** Durable consumer name of a tenant's consumer; injective because `consumer` has no "-". */
export function durableName(tenant: string, consumer: string): string {
  return `${tenant}--${consumer}`;
}

function durationToMs(field: string, d: Duration | undefined, fallback: number): number {
  if (!d) return fallback;
  const ms = durationMs(d);
  if (!Number.isFinite(ms) || ms < 1) throw invalidArgument(field, "must be at least 1ms");
  return ms;
}

/** Runs a NATS call; anything but a ConnectError becomes UNAVAILABLE (details logged, not sent). */
async function viaNats<T>(logger: Logger, what: string, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    if (err instanceof ConnectError) throw err;
    logger.warn({ err }, `${what} failed`);
    throw notConnected();
  }
}

function notConnected(): ConnectError {
  return unavailable("event bus is not connected to NATS; retry later");
}

function headersToRecord(h: MsgHdrs | undefined, skip: (name: string) => boolean): Record<string, string> {
  const out: Record<string, string> = {};
  if (!h) return out;
  for (const [k, vs] of h) if (!skip(k) && vs[0] !== undefined) out[k] = vs[0];
  return out;
}

function requestHash(r: PublishRequest): string {
  const h = createHash("sha256");
  h.update(r.subject).update("\0").update(r.payloadType).update("\0").update(r.payload).update("\0");
  for (const k of Object.keys(r.headers).sort())
    h.update(k)
      .update("=")
      .update(r.headers[k] ?? "")
      .update("\0");
  return h.digest("hex");
}

/** Creates the EventBusService handler (nops.kernel.v1.EventBusService). */
export function createEventBusService(
  deps: EventBusServiceDeps,
  options: EventBusServiceOptions,
): ServiceImpl<typeof EventBusService> {
  const { outbox, transactor, clock, bus } = deps;
  const bo = bus.options;

  const writer = deps.writer ?? createInlinePublishWriter({ outbox, transactor, idempotency: bus.idempotency });

  // Stored by the writer with group commit; acknowledged only once the row is durable.
  const store = async (r: PublishRequest): Promise<PublishResponse> => {
    let traceparent = currentTraceparent() ?? "";
    // As tracingEventSink does for other writers: an outbox span in the caller's trace, named in
    // the envelope so the relay's producer span and the consumer continue from it.
    const span =
      deps.tracer && traceparent
        ? deps.tracer.startSpan(
            `outbox.append ${r.subject}`,
            { kind: SpanKind.PRODUCER },
            contextFromTraceparent(traceparent),
          )
        : undefined;
    if (span) traceparent = currentTraceparent(trace.setSpan(ROOT_CONTEXT, span)) ?? traceparent;
    let result: PublishWriteResult;
    try {
      // A commit on the writer thread is outside this trace's context: its span is recorded here.
      const onCommit =
        span &&
        ((c: CommitTiming): void =>
          deps
            .tracer!.startSpan(
              "sqlite.transaction",
              {
                kind: SpanKind.INTERNAL,
                startTime: c.startMs,
                attributes: { "db.system.name": "sqlite", "db.operation.batch.size": c.batchSize },
              },
              trace.setSpan(ROOT_CONTEXT, span),
            )
            .end(c.endMs));
      result = await writer.write(
        {
          idempotencyKey: r.idempotencyKey,
          requestHash: requestHash(r),
          entry: {
            type: r.subject,
            tenant: r.tenant,
            source: bo.edgeId,
            occurredAt: clock.now(),
            payloadType: r.payloadType,
            payload: r.payload,
            correlationId: r.correlationId,
            traceparent,
            origin: Origin.CALLER,
            headers: callerHeaders(r.headers),
          },
        },
        onCommit,
      );
    } catch (err) {
      deps.logger.error({ err }, "publish batch commit failed");
      throw unavailable("event could not be stored");
    } finally {
      span?.end();
    }
    const response = (outboxId: number, eventId: string, subject: string, duplicate: boolean): PublishResponse => ({
      $typeName: "nops.kernel.v1.PublishResponse",
      eventId,
      outboxId: BigInt(outboxId),
      subject,
      duplicate,
    });
    switch (result.kind) {
      case "appended":
        bus.relay.kick();
        return response(result.event.id, result.event.eventId, result.event.subject, false);
      case "duplicate":
        return response(result.prior.outboxId, result.prior.eventId, result.prior.subject, true);
      case "conflict":
        throw failedPrecondition("idempotency_key was already used with a different request");
      case "failed":
        deps.logger.error({ err: result.message }, "publish write failed");
        throw internalError();
    }
  };

  const validatePublish = (r: PublishRequest): void => {
    checkTenant(r.tenant);
    if (r.subject === "") throw invalidArgument("subject", "is required");
    checkSubject("subject", r.subject, false);
    const namespace = r.subject.split(".")[0] ?? "";
    if (RESERVED_EVENT_NAMESPACES.includes(namespace))
      throw invalidArgument("subject", `namespace "${namespace}" is reserved for the kernel's own events`);
    const unregistered = checkCallerEvent(bo.schemas, r.subject, r.payloadType);
    if (unregistered) throw invalidArgument("subject", unregistered);
    if (r.payload.byteLength > options.maxPayloadBytes)
      throw invalidArgument("payload", `must be at most ${options.maxPayloadBytes} bytes`);
    const names = Object.keys(r.headers);
    if (names.length > options.maxHeaders)
      throw invalidArgument("headers", `must have at most ${options.maxHeaders} entries`);
    for (const n of names) {
      if (!HEADER_NAME.test(n) || /^(nats|nops)-/i.test(n))
        throw invalidArgument(
          "headers",
          `name ${JSON.stringify(n)} must match ${HEADER_NAME} and not start with Nats- or Nops-`,
        );
      if (/[\r\n]/.test(r.headers[n] ?? ""))
        throw invalidArgument("headers", `value of ${n} must not contain CR or LF`);
    }
    if (r.idempotencyKey.length > options.maxIdempotencyKeyLength || /[^\x21-\x7e]/.test(r.idempotencyKey)) {
      throw invalidArgument(
        "idempotency_key",
        `must be at most ${options.maxIdempotencyKeyLength} printable ASCII characters`,
      );
    }
    if (r.correlationId.length > 128) throw invalidArgument("correlation_id", "must be at most 128 characters");
  };

  async function ensureConsumer(r: SubscribeRequest): Promise<string> {
    checkTenant(r.tenant);
    if (!CONSUMER.test(r.consumer)) throw invalidArgument("consumer", `must match ${CONSUMER}`);
    if (r.filter !== "") checkSubject("filter", r.filter, true);
    const maxDeliver = r.maxDeliveries === 0 ? bo.defaultMaxDeliveries : r.maxDeliveries;
    const ackWait = durationToMs("ack_wait", r.ackWait, bo.defaultAckWaitMs);
    const backoff = r.backoff.map((d, i) => durationToMs(`backoff[${i}]`, d, 0));
    if (backoff.length > 0 && backoff.length >= maxDeliver)
      throw invalidArgument("backoff", "must have fewer entries than max_deliveries");
    const jsm = bus.jetstreamManager();
    if (!jsm) throw notConnected();
    const durable = durableName(r.tenant, r.consumer);
    const config: Partial<ConsumerConfig> = {
      durable_name: durable,
      filter_subject: eventSubject(r.tenant, r.filter === "" ? ">" : r.filter),
      ack_policy: AckPolicy.Explicit,
      deliver_policy: r.deliverPolicy === DeliverPolicy.NEW ? JsDeliverPolicy.New : JsDeliverPolicy.All,
      max_deliver: maxDeliver,
      ack_wait: ackWait * 1_000_000,
      ...(backoff.length > 0 ? { backoff: backoff.map((ms) => ms * 1_000_000) } : {}),
    };
    try {
      await jsm.consumers.add(bo.streamName, config);
    } catch (err) {
      // An existing durable keeps its position; only the changeable settings are updated.
      if (!(err instanceof Error && /already (exists|in use)/i.test(err.message))) throw err;
      const { durable_name: _d, deliver_policy: _p, filter_subject: _f, ...update } = config;
      await jsm.consumers.update(bo.streamName, durable, update);
    }
    return durable;
  }

  const toDelivered = (tenant: string, m: JsMsg): DeliveredMessage => {
    const envelope = m.data;
    let eventId = "";
    try {
      eventId = fromBinary(EventEnvelopeSchema, envelope).id;
    } catch {
      // Not an envelope (published to the stream by something else): deliver it without an id.
    }
    if (m.info.deliveryCount > 1) bus.recordRedelivery();
    return create(DeliveredMessageSchema, {
      subject: m.subject.slice(`nops.events.${tenant}.`.length),
      envelope,
      headers: headersToRecord(m.headers, (k) => k.startsWith("Nats-")),
      streamSequence: BigInt(m.seq),
      deliveryCount: m.info.deliveryCount,
      ackToken: (m as unknown as { reply: string }).reply,
      eventId,
    });
  };

  return {
    async publish(req) {
      validatePublish(req);
      return store(req);
    },

    async *subscribe(req, ctx: HandlerContext) {
      const messages = await viaNats(deps.logger, "subscribe", async () => {
        const durable = await ensureConsumer(req);
        const js = bus.jetstream();
        if (!js) throw notConnected();
        const consumer = await js.consumers.get(bo.streamName, durable);
        return consumer.consume({ max_messages: 64 });
      });
      const onAbort = (): void => {
        messages.stop();
      };
      if (ctx.signal.aborted) onAbort();
      ctx.signal.addEventListener("abort", onAbort, { once: true });
      try {
        for await (const m of messages) {
          if (ctx.signal.aborted) break;
          const headers: Record<string, string> = {};
          for (const key of m.headers?.keys() ?? []) headers[key.toLowerCase()] = m.headers?.get(key) ?? "";
          // The span covers handing the message to the subscriber; it ends when the stream asks for the next.
          const span = deps.tracer && startConsumerSpan(deps.tracer, m.subject, headers);
          try {
            yield { $typeName: "nops.kernel.v1.SubscribeResponse", message: toDelivered(req.tenant, m) };
          } finally {
            span?.end();
          }
        }
      } finally {
        ctx.signal.removeEventListener("abort", onAbort);
        messages.stop();
      }
    },

    async ack(req) {
      checkTenant(req.tenant);
      if (!CONSUMER.test(req.consumer)) throw invalidArgument("consumer", `must match ${CONSUMER}`);
      const t = req.ackToken.split(".");
      // $JS.ACK.<stream>.<consumer>.… (v1, 9 tokens) or $JS.ACK.<domain>.<hash>.<stream>.<consumer>.… (v2).
      const [stream, consumer] = t.length === 9 ? [t[2], t[3]] : t.length >= 12 ? [t[4], t[5]] : [undefined, undefined];
      if (
        t[0] !== "$JS" ||
        t[1] !== "ACK" ||
        stream !== bo.streamName ||
        consumer !== durableName(req.tenant, req.consumer)
      ) {
        throw invalidArgument("ack_token", "is not a delivery token of this consumer");
      }
      const nc = bus.connection();
      if (!nc) throw notConnected();
      let body = "+ACK";
      if (req.action === AckAction.NAK) {
        body = req.nakDelay
          ? `-NAK ${JSON.stringify({ delay: durationToMs("nak_delay", req.nakDelay, 0) * 1_000_000 })}`
          : "-NAK";
      } else if (req.action === AckAction.TERM) {
        body = "+TERM";
      }
      try {
        await nc.request(req.ackToken, body, { timeout: options.ackTimeoutMs });
      } catch (err) {
        deps.logger.debug({ err }, "ack not confirmed");
        throw unavailable("ack not confirmed by the server; the message may be redelivered");
      }
      return { $typeName: "nops.kernel.v1.AckResponse" };
    },

    listDeadLetters: (req) => viaNats(deps.logger, "listDeadLetters", () => listDeadLetters(req)),
    reprocess: (req) => viaNats(deps.logger, "reprocess", () => reprocess(req)),
  };

  async function listDeadLetters(req: ListDeadLettersRequest): Promise<ListDeadLettersResponse> {
    checkTenant(req.tenant);
    if (req.consumer !== "" && !CONSUMER.test(req.consumer))
      throw invalidArgument("consumer", `must match ${CONSUMER}`);
    if (req.pageSize > 500) throw invalidArgument("page_size", "must be at most 500");
    let start = 1;
    if (req.pageToken !== "") {
      start = Number(req.pageToken);
      if (!Number.isSafeInteger(start) || start < 1)
        throw invalidArgument("page_token", "is not a token from ListDeadLetters");
    }
    const jsm = bus.jetstreamManager();
    if (!jsm) throw notConnected();
    const filter =
      req.consumer === ""
        ? `nops.dlq.${req.tenant}.>`
        : deadLetterSubject(req.tenant, durableName(req.tenant, req.consumer));
    const size = req.pageSize === 0 ? 100 : req.pageSize;
    const out: DeadLetter[] = [];
    let next = "";
    for (;;) {
      // STREAM.MSG.GET accepts next_by_subj since nats-server 2.9; the client's type predates that.
      const query = { seq: start, next_by_subj: filter } as unknown as MsgRequest;
      const m = await jsm.streams.getMessage(bo.dlqStreamName, query).catch((err: unknown) => {
        if (err instanceof Error && /no message found/i.test(err.message)) return null;
        throw err;
      });
      // Defence in depth: never hand out another tenant's dead letter, whatever the filter did.
      if (!m || !m.subject.startsWith(`nops.dlq.${req.tenant}.`)) break;
      if (out.length === size) {
        next = String(m.seq);
        break;
      }
      const h = m.header;
      const durable = h.get(DLQ_HEADERS.consumer);
      out.push(
        create(DeadLetterSchema, {
          deadLetterId: BigInt(m.seq),
          subject: h.get(DLQ_HEADERS.subject).slice(`nops.events.${req.tenant}.`.length),
          envelope: m.data,
          headers: headersToRecord(h, (k) => k.startsWith("Nats-") || k.startsWith("Nops-Dlq-")),
          consumer: durable.startsWith(`${req.tenant}--`) ? durable.slice(req.tenant.length + 2) : durable,
          reason:
            h.get(DLQ_HEADERS.reason) === "terminated" ? DeadLetterReason.TERMINATED : DeadLetterReason.MAX_DELIVERIES,
          streamSequence: BigInt(Number(h.get(DLQ_HEADERS.streamSeq)) || 0),
          deliveries: Number(h.get(DLQ_HEADERS.deliveries)) || 0,
          deadAt: timestampFromMs(m.time.getTime()),
        }),
      );
      start = m.seq + 1;
    }
    return { $typeName: "nops.kernel.v1.ListDeadLettersResponse", deadLetters: out, nextPageToken: next };
  }

  async function reprocess(req: ReprocessRequest): Promise<ReprocessResponse> {
    checkTenant(req.tenant);
    if (req.deadLetterId === 0n) throw invalidArgument("dead_letter_id", "is required");
    const jsm = bus.jetstreamManager();
    const js = bus.jetstream();
    if (!jsm || !js) throw notConnected();
    const seq = Number(req.deadLetterId);
    const m = await jsm.streams.getMessage(bo.dlqStreamName, { seq }).catch((err: unknown) => {
      if (err instanceof Error && /no message found/i.test(err.message)) return null;
      throw err;
    });
    if (!m || !m.subject.startsWith(`nops.dlq.${req.tenant}.`)) throw notFound("dead letter");
    const subject = m.header.get(DLQ_HEADERS.subject);
    if (!subject.startsWith(`nops.events.${req.tenant}.`)) throw notFound("dead letter");
    const extra = headersToRecord(m.header, (k) => k.startsWith("Nats-") || k.startsWith("Nops-Dlq-"));
    if (deps.prePublish) {
      const verdict = await deps.prePublish(subject, m.data, extra);
      if (!verdict.allowed) throw failedPrecondition(`blocked by egress policy: ${verdict.reason ?? "not allowed"}`);
    }
    const h = natsHeaders();
    for (const [k, v] of Object.entries(extra)) h.set(k, v);
    // A new message id (the original one is inside the duplicate window or long gone); retries of
    // the same Reprocess reuse it, so a retry after a lost answer publishes nothing twice.
    const messageId = `${bo.edgeId}:dlq:${seq}`;
    const ack = await js.publish(subject, m.data, { msgID: messageId, headers: h });
    await jsm.streams.deleteMessage(bo.dlqStreamName, seq, false);
    return { $typeName: "nops.kernel.v1.ReprocessResponse", messageId, streamSequence: BigInt(ack.seq) };
  }
}
