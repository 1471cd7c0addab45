import type { EgressDecision, EgressGuard } from "./egress-guard.js";
import { TENANT_HEADER } from "./egress-interceptors.js";
import { OVERRIDE_HEADER } from "./override-grant.js";

/** Headers of a NATS message as the relay holds them (any object with `get`). */
export interface NatsHeadersLike {
  get(name: string): string;
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
// would record a decision about each decision, forever.
const GUARD_RECORD = /^nops\.events\.[^.]+\.(egress|dge)\./;

/**
 * Creates the pre-publish hook: the guard's own records and local subjects pass without asking
 * anyone; crossing subjects go
 * through the guard with the tenant from the x-nops-tenant header or the subject
 * (`nops.events.<tenant>.…`). The payload (an EventEnvelope) is read as protobuf wire text.
 */
export function createNatsEgressHook(guard: EgressGuard, options: NatsEgressHookOptions): NatsPrePublishHook {
  return async (subject, payload, headers) => {
    if (GUARD_RECORD.test(subject))
      return { allowed: true, reason: "guard_record", tier: "", classification: "", cached: false };
    if (!options.crossingSubjects.some((p) => subjectMatches(p, subject))) {
      return { allowed: true, reason: "local_subject", tier: "", classification: "", cached: false };
    }
    const fromSubject = /^nops\.events\.([^.]+)\./.exec(subject)?.[1] ?? "";
    const tenant = headers?.get(TENANT_HEADER) || fromSubject;
    const override = headers?.get(OVERRIDE_HEADER) || undefined;
    return guard.check({
      tenant,
      transport: "nats",
      destination: subject,
      dataType: subject.split(".").slice(3).join(".") || subject,
      payload,
      override,
    });
  };
}
