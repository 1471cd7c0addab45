import { fromBinary, type DescMessage } from "@bufbuild/protobuf";
import { ConfigError } from "../common/index.js";
import { Origin, type EventEnvelope } from "../../gen/nops/events/v1/envelope_pb.js";
import {
  AgentDeregisteredSchema,
  AgentHeartbeatSchema,
  AgentRegisteredSchema,
  AgentStatusChangedSchema,
  AgentUpdatedSchema,
} from "../../gen/nops/events/v1/agent_events_pb.js";
import { AuditCheckpointIssuedSchema } from "../../gen/nops/events/v1/audit_events_pb.js";
import { RateLimitExceededSchema } from "../../gen/nops/events/v1/billing_events_pb.js";
import {
  DegradedModeActivatedSchema,
  DegradedModeRecoveredSchema,
} from "../../gen/nops/events/v1/degraded_events_pb.js";
import {
  DgePolicyCacheInvalidatedSchema,
  EgressAllowedSchema,
  EgressBlockedSchema,
  EgressOverrideActivatedSchema,
} from "../../gen/nops/events/v1/egress_events_pb.js";

/** A registered event type: its name, the version its name carries, and its payload's protobuf message. */
export interface EventSchema {
  /** Versioned event type, e.g. "agent.registered.v1". */
  type: string;
  /** The version the type's ".v<N>" suffix names. */
  version: number;
  /** Protobuf message of the payload (EventEnvelope.payload_type is its full name). */
  schema: DescMessage;
}

const VERSION_SUFFIX = /\.v([1-9][0-9]*)$/;

/** The version an event type's ".v<N>" suffix names, or undefined when it has none. */
export function eventTypeVersion(type: string): number | undefined {
  const m = VERSION_SUFFIX.exec(type);
  return m ? Number(m[1]) : undefined;
}

function registry(entries: readonly [string, DescMessage][]): ReadonlyMap<string, EventSchema> {
  const map = new Map<string, EventSchema>();
  for (const [type, schema] of entries) {
    const version = eventTypeVersion(type);
    if (version === undefined) throw new Error(`event type ${type} has no .v<N> version suffix`);
    map.set(type, { type, version, schema });
  }
  return map;
}

/**
 * Every event type the kernel itself writes to the outbox (origin KERNEL), with its payload schema
 * (proto/nops/events/v1, checked by `buf breaking`). A new kernel event is added here and nowhere
 * else; a changed payload gets a new type (".v2") and a new message, never an edited one.
 */
export const KERNEL_EVENT_SCHEMAS: ReadonlyMap<string, EventSchema> = registry([
  ["agent.registered.v1", AgentRegisteredSchema],
  ["agent.heartbeat.v1", AgentHeartbeatSchema],
  ["agent.updated.v1", AgentUpdatedSchema],
  ["agent.deregistered.v1", AgentDeregisteredSchema],
  ["agent.status_changed.v1", AgentStatusChangedSchema],
  ["audit.checkpoint.issued.v1", AuditCheckpointIssuedSchema],
  ["billing.rate_limit_exceeded.v1", RateLimitExceededSchema],
  ["degraded.mode.activated.v1", DegradedModeActivatedSchema],
  ["degraded.mode.recovered.v1", DegradedModeRecoveredSchema],
  ["dge.policy.cache_invalidated.v1", DgePolicyCacheInvalidatedSchema],
  ["egress.allowed.v1", EgressAllowedSchema],
  ["egress.blocked.v1", EgressBlockedSchema],
  ["egress.override.activated.v1", EgressOverrideActivatedSchema],
]);

/** Why the kernel may not write an event of `type` with payload `schema`, or undefined when it may. */
export function checkKernelEvent(type: string, schema: DescMessage): string | undefined {
  const registered = KERNEL_EVENT_SCHEMAS.get(type);
  if (!registered) return `event type ${JSON.stringify(type)} is not a registered kernel event type`;
  if (registered.schema.typeName !== schema.typeName)
    return `event type ${type} carries ${registered.schema.typeName}, not ${schema.typeName}`;
  return undefined;
}

/**
 * The event types tenants may publish (configuration `events.schemas`): versioned type ->
 * full name of its payload's schema (EventEnvelope.payload_type, e.g. "acme.orders.v1.OrderCreated").
 * Empty: Publish accepts any type outside the kernel's namespaces (no registry configured).
 */
export type TenantEventSchemas = Readonly<Record<string, string>>;

const PAYLOAD_TYPE = /^[A-Za-z0-9_.+/-]{1,256}$/;
const TYPE_TOKEN = /^[A-Za-z0-9_-]{1,64}$/;

/** Validates `events.schemas`; throws ConfigError naming the entry at fault. */
export function resolveTenantEventSchemas(
  input: unknown,
  reserved: readonly string[],
  path = "events.schemas",
): TenantEventSchemas {
  if (input === undefined) return {};
  if (typeof input !== "object" || input === null || Array.isArray(input))
    throw new ConfigError(`${path} must be a map of event type to payload type`);
  const out: Record<string, string> = {};
  for (const [type, payloadType] of Object.entries(input)) {
    const at = `${path}[${JSON.stringify(type)}]`;
    if (!type.split(".").every((t) => TYPE_TOKEN.test(t)) || eventTypeVersion(type) === undefined)
      throw new ConfigError(`${at}: an event type is dot-separated tokens of [A-Za-z0-9_-] ending in .v<N>`);
    if (reserved.includes(type.split(".")[0]!))
      throw new ConfigError(`${at}: namespace "${type.split(".")[0]}" is reserved for the kernel's own events`);
    if (typeof payloadType !== "string" || !PAYLOAD_TYPE.test(payloadType))
      throw new ConfigError(`${at} must be the payload's type name (1-256 of [A-Za-z0-9_.+/-])`);
    out[type] = payloadType;
  }
  return out;
}

/** Why a caller may not publish `type` with `payloadType`, or undefined when it may. */
export function checkCallerEvent(schemas: TenantEventSchemas, type: string, payloadType: string): string | undefined {
  if (Object.keys(schemas).length === 0) return undefined;
  const registered = Object.hasOwn(schemas, type) ? schemas[type] : undefined;
  if (registered === undefined) return `event type ${JSON.stringify(type)} is not registered (events.schemas)`;
  if (payloadType !== registered)
    return `event type ${type} carries payload_type ${JSON.stringify(registered)}, not ${JSON.stringify(payloadType)}`;
  return undefined;
}

/**
 * Why an outbox envelope may not be published, or undefined when it may: a kernel event must be of a
 * registered type whose payload decodes with its schema; a caller's must pass checkCallerEvent.
 */
export function checkEnvelope(envelope: EventEnvelope, tenantSchemas: TenantEventSchemas): string | undefined {
  if (envelope.origin === Origin.CALLER) return checkCallerEvent(tenantSchemas, envelope.type, envelope.payloadType);
  if (envelope.origin !== Origin.KERNEL) return `event ${envelope.id} names no origin`;
  const registered = KERNEL_EVENT_SCHEMAS.get(envelope.type);
  if (!registered) return `event type ${JSON.stringify(envelope.type)} is not a registered kernel event type`;
  if (envelope.payloadType !== registered.schema.typeName)
    return `event type ${envelope.type} carries ${registered.schema.typeName}, not ${envelope.payloadType}`;
  try {
    fromBinary(registered.schema, envelope.payload);
  } catch (err) {
    return `payload of ${envelope.type} does not decode as ${registered.schema.typeName}: ${err instanceof Error ? err.message : String(err)}`;
  }
  return undefined;
}
