import { isValidSpanId, isValidTraceId } from "@opentelemetry/api";
import { TraceState } from "@opentelemetry/core";
import { OVERRIDE_HEADER } from "./override-grant.js";

/** Header (gRPC metadata) naming the tenant whose data an outbound call carries. */
export const TENANT_HEADER = "x-nops-tenant";

// Forwarded as version 00 only: a later version may append fields, and those would be free text.
const TRACEPARENT = /^00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}$/;
const TRACESTATE_MAX_CHARS = 512;
const TRACESTATE_MAX_MEMBERS = 32;

/** A W3C `traceparent` (version 00, non-zero ids) as sent, or undefined when it is malformed. */
export function validTraceparent(value: string | undefined): string | undefined {
  const m = value === undefined ? null : TRACEPARENT.exec(value);
  return m && isValidTraceId(m[1] ?? "") && isValidSpanId(m[2] ?? "") ? value : undefined;
}

/**
 * A W3C `tracestate` as sent, or undefined when any member is malformed (OpenTelemetry's parser
 * skips bad members; here one bad member drops the whole header rather than forward a repaired one).
 */
export function validTracestate(value: string | undefined): string | undefined {
  if (value === undefined || value.length === 0 || value.length > TRACESTATE_MAX_CHARS) return undefined;
  const members = value
    .split(",")
    .map((m) => m.trim())
    .filter((m) => m !== "");
  if (members.length === 0 || members.length > TRACESTATE_MAX_MEMBERS) return undefined;
  const parsed = new TraceState(value).serialize();
  return parsed.split(",").filter((m) => m !== "").length === members.length ? value : undefined;
}

/**
 * The trace headers of an outbound call, malformed ones dropped: a `tracestate` without a valid
 * `traceparent` names no trace and is dropped too.
 */
export function forwardableTraceContext(
  traceparent: string | undefined,
  tracestate: string | undefined,
): { traceparent?: string; tracestate?: string } {
  const tp = validTraceparent(traceparent);
  if (tp === undefined) return {};
  const ts = validTracestate(tracestate);
  return ts === undefined ? { traceparent: tp } : { traceparent: tp, tracestate: ts };
}

// Ids in these shapes are random identifiers (the kernel's own UUIDs and trace ids): classifying
// them would make every call unique to the verdict cache and cannot find data in them.
const OPAQUE_ID = /^(?:[0-9a-f]{32}|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})$/i;

/**
 * What of an outbound call's headers or metadata the classifier reads, one `name: value` line each
 * in name order. Left out: the tenant and break-glass headers (the guard's own inputs, never
 * forwarded), a valid `traceparent` (hex ids only) and an `x-request-id` that is a UUID or trace
 * id. Everything else, `tracestate` included, is data.
 */
export function headersText(headers: Iterable<readonly [string, string]>): string {
  const lines: string[] = [];
  for (const [rawName, value] of headers) {
    const name = rawName.toLowerCase();
    if (name === TENANT_HEADER || name === OVERRIDE_HEADER) continue;
    if (name === "traceparent" && validTraceparent(value) !== undefined) continue;
    if (name === "x-request-id" && OPAQUE_ID.test(value)) continue;
    lines.push(`${name}: ${value}`);
  }
  return lines.sort().join("\n");
}

/** Is this request id an opaque random id (UUID or trace id) rather than caller text? */
export function isOpaqueId(value: string): boolean {
  return OPAQUE_ID.test(value);
}
