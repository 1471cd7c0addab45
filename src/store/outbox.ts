import { toBinary, type DescMessage, type MessageShape } from "@bufbuild/protobuf";
import type { Clock } from "../common/index.js";
import { Origin } from "../../gen/nops/events/v1/envelope_pb.js";
import type { AppendedEvent, OutboxStore } from "./outbox-store.js";
import { checkKernelEvent } from "./event-schemas.js";

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

/**
 * First subject tokens of the kernel's own event types (agent.registered.v1, egress.blocked.v1,
 * …): a caller may not publish into them, so a consumer can trust that such an event came from
 * the kernel, and nothing a caller writes can pass for the guard's own records.
 */
export const RESERVED_EVENT_NAMESPACES: readonly string[] = [
  "agent",
  "apikey",
  "audit",
  "billing",
  "degraded",
  "dge",
  "egress",
  "federation",
  "kernel",
  "nops",
];

/**
 * Event headers the kernel itself acts on (the tenant of an egress decision, a break-glass
 * grant). They are stripped from what a caller publishes before the outbox and never forwarded:
 * the tenant comes from the authenticated caller and a grant is never replayed from a queue.
 */
export const KERNEL_EVENT_HEADERS: readonly string[] = ["x-nops-tenant", "x-enis-override"];

/** A caller's event headers without the ones the kernel acts on (case-insensitive). */
export function callerHeaders(headers: Record<string, string>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(headers)) if (!KERNEL_EVENT_HEADERS.includes(k.toLowerCase())) out[k] = v;
  return out;
}

/**
 * Creates the event sink that writes typed kernel events to the outbox store. An event whose type is
 * not in KERNEL_EVENT_SCHEMAS, or whose payload is not that type's schema, is refused (thrown), so the
 * change that reported it rolls back rather than commit an event no consumer can decode.
 */
export function createOutbox(store: OutboxStore, options: OutboxOptions): EventSink {
  return {
    append: (event) => {
      const problem = checkKernelEvent(event.type, event.schema);
      if (problem) throw new Error(`refusing to write an event: ${problem}`);
      return store.append({
        type: event.type,
        tenant: event.tenant,
        source: options.source,
        occurredAt: options.clock.now(),
        payloadType: event.schema.typeName,
        payload: toBinary(event.schema, event.payload),
        traceparent: event.traceparent,
        correlationId: event.correlationId,
        origin: Origin.KERNEL,
      });
    },
  };
}
