import {
  ROOT_CONTEXT,
  SpanKind,
  context,
  trace,
  type Context,
  type Span,
  type TextMapGetter,
  type TextMapSetter,
  type Tracer,
} from "@opentelemetry/api";
import { W3CTraceContextPropagator } from "@opentelemetry/core";

// One stateless propagator: W3C Trace Context is the only format the kernel speaks on the wire
// (gRPC metadata, HTTP headers, NATS headers, EventEnvelope.traceparent).
const w3c = new W3CTraceContextPropagator();

const recordSetter: TextMapSetter<Record<string, string>> = { set: (c, k, v) => void (c[k] = v) };
const recordGetter: TextMapGetter<Record<string, string | undefined>> = {
  keys: (c) => Object.keys(c),
  get: (c, k) => c[k],
};
/** Reads W3C headers from a fetch-style `Headers` (connect-es request and response headers). */
export const headersGetter: TextMapGetter<Headers> = {
  keys: (h) => [...h.keys()],
  get: (h, k) => h.get(k) ?? undefined,
};
const headersSetter: TextMapSetter<Headers> = { set: (h, k, v) => h.set(k, v) };

/** The active span as a W3C `traceparent` value, or undefined when there is none. */
export function currentTraceparent(ctx: Context = context.active()): string | undefined {
  const carrier: Record<string, string> = {};
  w3c.inject(ctx, carrier, recordSetter);
  return carrier.traceparent;
}

/** Writes `traceparent` (and `tracestate`) of `ctx` into a header record (NATS headers, fetch init). */
export function injectTraceContext(
  carrier: Record<string, string>,
  ctx: Context = context.active(),
): Record<string, string> {
  w3c.inject(ctx, carrier, recordSetter);
  return carrier;
}

/** Writes `traceparent` (and `tracestate`) of `ctx` into fetch-style Headers. */
export function injectTraceHeaders(headers: Headers, ctx: Context = context.active()): Headers {
  w3c.inject(ctx, headers, headersSetter);
  return headers;
}

/** The remote parent carried by a header record (`traceparent`/`tracestate`), or `base` when none is valid. */
export function extractTraceContext(
  carrier: Record<string, string | undefined>,
  base: Context = ROOT_CONTEXT,
): Context {
  return w3c.extract(base, carrier, recordGetter);
}

/** The remote parent carried by fetch-style Headers, or `base` when none is valid. */
export function extractTraceHeaders(headers: Headers, base: Context = ROOT_CONTEXT): Context {
  return w3c.extract(base, headers, headersGetter);
}

/** The remote parent a `traceparent` value names (e.g. EventEnvelope.traceparent), or the root context. */
export function contextFromTraceparent(traceparent: string | undefined, tracestate?: string): Context {
  if (!traceparent) return ROOT_CONTEXT;
  return extractTraceContext(tracestate ? { traceparent, tracestate } : { traceparent });
}

/** A started PRODUCER span and the NATS headers that carry it. */
export interface ProducerSpan {
  span: Span;
  /** `traceparent` (+ `tracestate`) naming `span`: set these on the NATS message. */
  headers: Record<string, string>;
}

/**
 * Starts the span of one NATS publish, child of the trace an outbox row carries
 * (EventEnvelope.traceparent), and returns the headers to publish with. The caller ends the span
 * when the PubAck (or the failure) arrives. No traceparent: a new root (a background event).
 */
export function startProducerSpan(tracer: Tracer, subject: string, traceparent: string | undefined): ProducerSpan {
  const parent = contextFromTraceparent(traceparent);
  const span = tracer.startSpan(
    `publish ${subject}`,
    {
      kind: SpanKind.PRODUCER,
      attributes: {
        "messaging.system": "nats",
        "messaging.operation.type": "publish",
        "messaging.destination.name": subject,
      },
    },
    parent,
  );
  return { span, headers: injectTraceContext({}, trace.setSpan(parent, span)) };
}

/**
 * Starts the span of one consumed NATS message, child of the producer span named by its
 * `traceparent` header (or, failing that, the envelope's traceparent). Run the handler inside
 * `trace.setSpan(context.active(), span)` so its own calls join the trace; the caller ends it.
 */
export function startConsumerSpan(
  tracer: Tracer,
  subject: string,
  headers: Record<string, string | undefined>,
  envelopeTraceparent?: string,
): Span {
  const parent = headers.traceparent ? extractTraceContext(headers) : contextFromTraceparent(envelopeTraceparent);
  return tracer.startSpan(
    `process ${subject}`,
    {
      kind: SpanKind.CONSUMER,
      attributes: {
        "messaging.system": "nats",
        "messaging.operation.type": "process",
        "messaging.destination.name": subject,
      },
    },
    parent,
  );
}
