import type { EgressDecision, EgressGuard } from "./egress-guard.js";
import { fromBinary } from "@bufbuild/protobuf";
import { TENANT_PATTERN } from "../common/index.js";
import { EventEnvelopeSchema, Origin, type EventEnvelope } from "../../gen/nops/events/v1/envelope_pb.js";

/** Headers of a NATS message as the relay holds them. */
export interface NatsHeadersLike {
  get(name: string): string;
  /** Every header name, so the guard can read all of them. */
  names?(): string[];
}

/** Called by the event relay before it publishes to a subject; publish only when `allowed`. */
export type NatsPrePublishHook = (
  subject: string,
  payload: Uint8Array,
  headers?: NatsHeadersLike,
) => Promise<EgressDecision>;

/** Options of the NATS pre-publish hook. */
export interface NatsEgressHookOptions {
  /** Subjects that leave the edge (to the hub or other kernels), NATS wildcard syntax ("*", ">"). */
  crossingSubjects: string[];
}

/** Matches a subject against a NATS pattern ("*" one token, ">" the rest). */
export function subjectMatches(pattern: string, subject: string): boolean {
  const p = pattern.split(".");
  const s = subject.split(".");
  for (let i = 0; i < p.length; i++) {
    if (p[i] === ">") return s.length > i;
    if (i >= s.length || (p[i] !== "*" && p[i] !== s[i])) return false;
  }
  return p.length === s.length;
}

// The guard's own decision records (egress.*, dge.*) carry only redacted metadata; checking them
// would record a decision about each decision, forever. Only the kernel can write them: the
// envelope's origin is set by the kernel, and callers may not publish into these namespaces.
const GUARD_RECORD_TYPE = /^(egress|dge)\./;

function envelopeOf(payload: Uint8Array): EventEnvelope | undefined {
  try {
    return fromBinary(EventEnvelopeSchema, payload);
  } catch {
    return undefined;
  }
}

/**
 * Creates the pre-publish hook: the kernel's own decision records and local subjects pass without
 * asking anyone; crossing subjects go through the guard under the tenant of the subject
 * (`nops.events.<tenant>.…`, built by the kernel from the authenticated caller's tenant: no
 * header can change it). The guard reads what the event carries, not the kernel's ids around
 * it: the event type, its payload and the caller's headers.
 */
export function createNatsEgressHook(guard: EgressGuard, options: NatsEgressHookOptions): NatsPrePublishHook {
  return async (subject, payload, headers) => {
    const envelope = envelopeOf(payload);
    if (envelope?.origin === Origin.KERNEL && GUARD_RECORD_TYPE.test(envelope.type))
      return { allowed: true, reason: "guard_record", tier: "", classification: "", cached: false };
    if (!options.crossingSubjects.some((p) => subjectMatches(p, subject))) {
      return { allowed: true, reason: "local_subject", tier: "", classification: "", cached: false };
    }
    // nops.events.<tenant>.<type> (to the hub) or nops.fed.<target-edge>.<tenant>.<type> (to a peer edge).
    const match = /^nops\.(events|fed\.[^.]+)\.([^.]+)\./.exec(subject);
    const tenant = match?.[2] ?? "";
    const typeStart = match ? match[1]!.split(".").length + 2 : 3;
    const carried: [string, string][] = [[":subject", subject]];
    for (const name of headers?.names?.() ?? []) carried.push([name, headers?.get(name) ?? ""]);
    return guard.check({
      tenant,
      transport: "nats",
      destination: subject,
      dataType: subject.split(".").slice(typeStart).join(".") || subject,
      // Event ids, correlation ids and the source edge are kernel-minted structure, not data.
      payload: envelope ? { type: envelope.type, payload: envelope.payload } : payload,
      headers: carried,
      // The subject's tail is the caller's event type and may be what held the data.
      record: { destination: TENANT_PATTERN.test(tenant) ? `nops.${match![1]}.${tenant}` : "nats", dataType: "event" },
    });
  };
}
