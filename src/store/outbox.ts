import { toBinary, type DescMessage, type MessageShape } from "@bufbuild/protobuf";
import type { Clock } from "../common/clock.js";
import type { AppendedEvent, OutboxStore } from "./outbox-store.js";

export { eventSubject, type AppendedEvent } from "./outbox-store.js";

/** An event to record: a versioned type and its protobuf payload. */
export interface KernelEvent<Desc extends DescMessage = DescMessage> {
  /** Versioned event type, e.g. "agent.registered.v1". */
  type: string;
  tenant: string;
  schema: Desc;
  payload: MessageShape<Desc>;
  correlationId?: string;
  traceparent?: string;
}

/**
 * Where events go. `append` writes an outbox row; called inside a Transactor transaction, the
 * row commits or rolls back with the change it reports.
 */
export interface EventSink {
  append(event: KernelEvent): AppendedEvent;
}

/** Options for the outbox. */
export interface OutboxOptions {
  /** The edge's id, written as the envelope's source. */
  source: string;
  clock: Clock;
}

/** Creates the event sink that writes typed kernel events to the outbox store. */
export function createOutbox(store: OutboxStore, options: OutboxOptions): EventSink {
  return {
    append: (event) =>
      store.append({
        type: event.type,
        tenant: event.tenant,
        source: options.source,
        occurredAt: options.clock.now(),
        payloadType: event.schema.typeName,
        payload: toBinary(event.schema, event.payload),
        traceparent: event.traceparent,
        correlationId: event.correlationId,
      }),
  };
}
