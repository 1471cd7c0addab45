import { Code } from "@connectrpc/connect";
import { EgressClass, PiiType, Tier } from "../../gen/nops/dge/v1/dge_pb.js";

// The kernel's side of the DGE contract (proto/nops/dge/v1): names of the proto enums as config, events and
// metrics spell them. Everything here is derived from the contract, never from a DGE implementation, so any
// DGE that speaks the proto (the reference one in packages/reference-dge or an external one) fits.

/** Egress class names as config and events spell them. */
export const EGRESS_CLASS_NAMES = ["D0", "D1", "D2", "D3", "D4"] as const;
/** One of EGRESS_CLASS_NAMES. */
export type EgressClassName = (typeof EGRESS_CLASS_NAMES)[number];
/** A tenant tier as config spells it. */
export type TierName = 1 | 2 | 3 | "air-gapped";

/** "D0".."D4" for a proto class ("" when unspecified). */
export function egressClassName(c: EgressClass): EgressClassName | "" {
  return c === EgressClass.UNSPECIFIED ? "" : (EGRESS_CLASS_NAMES[c - EgressClass.D0] ?? "");
}

/** The proto tier of a config tier. */
export function tierOf(tier: TierName): Tier {
  return tier === "air-gapped" ? Tier.TIER_AIR_GAPPED : Tier.TIER_1 + tier - 1;
}

/**
 * The name of a proto PiiType as events and metrics spell it: the enum value name in lower case
 * ("email", "credit_card", "us_ssn", ...); "unspecified" for UNSPECIFIED and values this build does not know.
 */
export function piiKindOf(type: PiiType): string {
  const name = type === PiiType.UNSPECIFIED ? undefined : (PiiType[type] as string | undefined);
  return name === undefined ? "unspecified" : name.toLowerCase();
}

/**
 * Status codes that are the DGE's own answer: it is alive and decided. Anything else (refused,
 * reset, cancelled, timed out) is no answer yet: the guard retries it, the breaker counts it.
 */
export const DGE_ANSWER_CODES: ReadonlySet<Code> = new Set([
  Code.InvalidArgument,
  Code.PermissionDenied,
  Code.Unauthenticated,
  Code.FailedPrecondition,
  Code.NotFound,
  Code.Unimplemented,
  Code.ResourceExhausted,
  Code.OutOfRange,
  Code.AlreadyExists,
]);

/** True when `destination` matches one of `patterns` (exact, or "prefix*"); an empty list matches all. */
export function destinationAllowed(patterns: readonly string[], destination: string): boolean {
  return (
    patterns.length === 0 ||
    patterns.some((p) => (p.endsWith("*") ? destination.startsWith(p.slice(0, -1)) : p === destination))
  );
}
