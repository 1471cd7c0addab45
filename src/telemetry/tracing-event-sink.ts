import { SpanKind, SpanStatusCode, context, trace, type Tracer } from "@opentelemetry/api";
import type { EventSink } from "../store/index.js";
import { currentTraceparent } from "./trace-context.js";

/**
 * Wraps the outbox so an event appended during a traced call carries the trace: an
 * `outbox.append` span (child of the handler's span, inside its SQLite transaction) whose
 * W3C traceparent is written to EventEnvelope.traceparent. The relay continues the trace from
 * that field (startProducerSpan) and consumers from the NATS header (startConsumerSpan).
 * Outside a trace the event is appended unchanged, without a span.
 */
export function tracingEventSink(sink: EventSink, tracer: Tracer): EventSink {
  return {
    append(event) {
      if (event.traceparent || !trace.getActiveSpan()) return sink.append(event);
      const span = tracer.startSpan(`outbox.append ${event.type}`, {
        kind: SpanKind.PRODUCER,
        attributes: {
          "messaging.system": "nats",
          "messaging.operation.type": "create",
          "nops.event.type": event.type,
          "nops.tenant": event.tenant,
        },
      });
      try {
        const traceparent = currentTraceparent(trace.setSpan(context.active(), span));
        const appended = sink.append(traceparent ? { ...event, traceparent } : event);
        span.setAttributes({
          "messaging.message.id": appended.eventId,
          "messaging.destination.name": appended.subject,
        });
        return appended;
      } catch (err) {
        span.setStatus({ code: SpanStatusCode.ERROR, message: err instanceof Error ? err.name : "error" });
        throw err;
      } finally {
        span.end();
      }
    },
  };
}
