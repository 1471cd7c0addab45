import {
  AckPolicy,
  DeliverPolicy,
  type JetStreamClient,
  type JetStreamManager,
  type ConsumerMessages,
} from "@nats-io/jetstream";
import { headers as natsHeaders } from "@nats-io/nats-core";
import type { Logger } from "../telemetry/index.js";
import { ensureStream } from "./hub-streams.js";

/** Headers the mover sets on a dead letter (the original message's own headers are kept too). */
export const DLQ_HEADERS = {
  subject: "Nops-Dlq-Subject",
  streamSeq: "Nops-Dlq-Stream-Seq",
  consumer: "Nops-Dlq-Consumer",
  reason: "Nops-Dlq-Reason",
  deliveries: "Nops-Dlq-Deliveries",
} as const;

/** Stream names the mover works with (a subset of EventBusOptions). */
export interface DeadLetterMoverOptions {
  streamName: string;
  advisoryStreamName: string;
  dlqStreamName: string;
  /** Max age of dead letters and captured advisories. */
  maxAgeMs: number;
}

/** DLQ subject of a tenant's consumer: nops.dlq.<tenant>.<durable>. */
export function deadLetterSubject(tenant: string, durable: string): string {
  return `nops.dlq.${tenant}.${durable}`;
}

/** Moves messages named by captured max-deliveries / terminated advisories into the DLQ stream. */
export interface DeadLetterMover {
  /** Creates the advisory and DLQ streams and the mover's durable consumer (idempotent). */
  ensureStreams(jsm: JetStreamManager): Promise<void>;
  /** Consumes advisories until stop(); an advisory is acked only after its dead letter is stored. */
  run(js: JetStreamClient, jsm: JetStreamManager): Promise<void>;
  stop(): void;
}

interface Advisory {
  type?: string;
  stream?: string;
  consumer?: string;
  stream_seq?: number;
  deliveries?: number;
  reason?: string;
}

const MOVER = "dlq-mover";

/** Creates the dead-letter mover. */
export function createDeadLetterMover(deps: { logger: Logger }, options: DeadLetterMoverOptions): DeadLetterMover {
  let messages: ConsumerMessages | undefined;
  let stopped = false;
  const advisorySubjects = [
    `$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.${options.streamName}.*`,
    `$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.${options.streamName}.*`,
  ];

  async function move(js: JetStreamClient, jsm: JetStreamManager, adv: Advisory, terminated: boolean): Promise<void> {
    if (adv.stream !== options.streamName || !adv.consumer || !adv.stream_seq) return;
    const original = await jsm.streams.getMessage(options.streamName, { seq: adv.stream_seq }).catch((err: unknown) => {
      if (err instanceof Error && /no message found/i.test(err.message)) return null;
      throw err;
    });
    const h = natsHeaders();
    if (original?.header) {
      for (const [k, vs] of original.header) if (!k.startsWith("Nats-")) for (const v of vs) h.append(k, v);
    }
    const subject = original?.subject ?? "";
    h.set(DLQ_HEADERS.subject, subject);
    h.set(DLQ_HEADERS.streamSeq, String(adv.stream_seq));
    h.set(DLQ_HEADERS.consumer, adv.consumer);
    h.set(DLQ_HEADERS.reason, terminated ? "terminated" : "max_deliveries");
    h.set(DLQ_HEADERS.deliveries, String(adv.deliveries ?? 0));
    // Subjects are nops.events.<tenant>.…; the message id makes a re-moved advisory a no-op.
    const tenant = subject.split(".")[2] ?? "unknown";
    await js.publish(deadLetterSubject(tenant, adv.consumer), original?.data ?? new Uint8Array(), {
      msgID: `dlq:${options.streamName}:${adv.consumer}:${adv.stream_seq}`,
      headers: h,
    });
  }

  return {
    async ensureStreams(jsm) {
      const maxAge = options.maxAgeMs * 1_000_000;
      await ensureStream(jsm, { name: options.advisoryStreamName, subjects: advisorySubjects, max_age: maxAge });
      await ensureStream(jsm, { name: options.dlqStreamName, subjects: ["nops.dlq.>"], max_age: maxAge });
      await jsm.consumers.add(options.advisoryStreamName, {
        durable_name: MOVER,
        ack_policy: AckPolicy.Explicit,
        deliver_policy: DeliverPolicy.All,
        ack_wait: 30_000_000_000,
      });
    },
    async run(js, jsm) {
      stopped = false;
      const consumer = await js.consumers.get(options.advisoryStreamName, MOVER);
      messages = await consumer.consume({ max_messages: 64 });
      if (stopped) messages.stop();
      for await (const m of messages) {
        try {
          await move(js, jsm, m.json<Advisory>(), m.subject.includes(".MSG_TERMINATED."));
          m.ack();
        } catch (err) {
          deps.logger.warn({ err, subject: m.subject }, "dead letter not stored yet; advisory will be redelivered");
          m.nak(1000);
        }
      }
    },
    stop() {
      stopped = true;
      messages?.stop();
    },
  };
}
