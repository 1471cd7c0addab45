import { createHash } from "node:crypto";
import { create } from "@bufbuild/protobuf";
import {
  ConfigError,
  readSection,
  readInt,
  readString,
  readStringList,
  type RawSection,
  TENANT_PATTERN,
} from "../../../src/common/index.js";
import { PolicySchema, type Classification, type Policy } from "../../../gen/nops/dge/v1/dge_pb.js";
import {
  EGRESS_CLASS_NAMES,
  egressClassOf,
  piiTypeOf,
  tierOf,
  type EgressClassName,
  type TierName,
} from "./dge-codes.js";
import { PII_KINDS, type PiiKind } from "./pii-kinds.js";

/** One tenant's egress policy at one tier. */
export interface DgePolicySpec {
  /** Highest class allowed out. @default "D1" (operational metadata without PII) */
  maxEgressClass: EgressClassName;
  /** PII kinds allowed out despite being found (ignored for tier 3 and air-gapped). @default [] */
  allowedPiiTypes: PiiKind[];
  /** Destinations allowed; exact names or "prefix*"; empty means any. @default [] */
  allowedDestinations: string[];
  /** How long clients may cache the policy and verdicts under it, seconds. @default 300 */
  ttlSeconds: number;
}

/** Policies of the reference DGE: per-tier defaults and per-tenant overrides. */
export interface DgePoliciesOptions {
  /** Default policy per tier ("1", "2", "3"); air-gapped tenants never get anything out. */
  tiers: Record<"1" | "2" | "3", DgePolicySpec>;
  /** Per-tenant, per-tier overrides (fields not given come from the tier default). @default {} */
  tenants: Record<string, Partial<Record<"1" | "2" | "3", DgePolicySpec>>>;
}

/** Default TTL of policies and verdicts (the 5-minute cache TTL). */
export const DEFAULT_DGE_POLICY_TTL_SECONDS = 300;
/** Default policy for every tier: operational metadata (D1) goes out, nothing with PII. */
export const DEFAULT_DGE_POLICY: Readonly<DgePolicySpec> = {
  maxEgressClass: "D1",
  allowedPiiTypes: [],
  allowedDestinations: [],
  ttlSeconds: DEFAULT_DGE_POLICY_TTL_SECONDS,
};
const TIER_KEYS = ["1", "2", "3"] as const;

/** Validates one policy (fields not given come from `base`); throws ConfigError naming the field. */
export function resolveDgePolicySpec(input: unknown, path: string, base: DgePolicySpec): DgePolicySpec {
  const s: RawSection = readSection(input, path, DEFAULT_DGE_POLICY);
  const allowed = readStringList(s, "allowedPiiTypes", path, base.allowedPiiTypes);
  for (const k of allowed) {
    if (!(PII_KINDS as readonly string[]).includes(k))
      throw new ConfigError(
        `${path}.allowedPiiTypes: unknown type ${JSON.stringify(k)} (one of ${PII_KINDS.join(", ")})`,
      );
  }
  return {
    maxEgressClass: readString(s, "maxEgressClass", path, base.maxEgressClass, {
      oneOf: EGRESS_CLASS_NAMES,
    }) as EgressClassName,
    allowedPiiTypes: allowed as PiiKind[],
    allowedDestinations: readStringList(s, "allowedDestinations", path, base.allowedDestinations),
    ttlSeconds: readInt(s, "ttlSeconds", path, base.ttlSeconds, 1, 86_400),
  };
}

/** Validates the policy section, filling defaults; throws ConfigError naming the field. */
export function resolveDgePoliciesOptions(input: unknown, path = "dge.policies"): DgePoliciesOptions {
  const s = readSection(input, path, { tiers: {}, tenants: {} });
  const tiersIn = readSection(s.tiers, `${path}.tiers`, { 1: 0, 2: 0, 3: 0 });
  const tiers = Object.fromEntries(
    TIER_KEYS.map((k) => [k, resolveDgePolicySpec(tiersIn[k], `${path}.tiers.${k}`, DEFAULT_DGE_POLICY)]),
  ) as DgePoliciesOptions["tiers"];
  const tenants: DgePoliciesOptions["tenants"] = {};
  const tenantsIn = s.tenants ?? {};
  if (typeof tenantsIn !== "object" || Array.isArray(tenantsIn))
    throw new ConfigError(`${path}.tenants must be an object`);
  for (const [tenant, perTier] of Object.entries(tenantsIn as Record<string, unknown>)) {
    if (!TENANT_PATTERN.test(tenant))
      throw new ConfigError(`${path}.tenants: ${JSON.stringify(tenant)} is not a valid tenant id`);
    const t = readSection(perTier, `${path}.tenants.${tenant}`, { 1: 0, 2: 0, 3: 0 });
    tenants[tenant] = Object.fromEntries(
      TIER_KEYS.filter((k) => t[k] !== undefined).map((k) => [
        k,
        resolveDgePolicySpec(t[k], `${path}.tenants.${tenant}.${k}`, tiers[k]),
      ]),
    );
  }
  return { tiers, tenants };
}

/** The policy of `tenant` at `tier` as a proto message (air-gapped: nothing allowed). */
export function policyFor(options: DgePoliciesOptions, tenant: string, tier: TierName): Policy {
  const spec: DgePolicySpec =
    tier === "air-gapped"
      ? {
          maxEgressClass: "D0",
          allowedPiiTypes: [],
          allowedDestinations: [],
          ttlSeconds: options.tiers["3"].ttlSeconds,
        }
      : (options.tenants[tenant]?.[String(tier) as "1" | "2" | "3"] ?? options.tiers[String(tier) as "1" | "2" | "3"]);
  const version = createHash("sha256")
    .update(JSON.stringify([tenant, tier, spec]))
    .digest("hex")
    .slice(0, 16);
  return create(PolicySchema, {
    tenant,
    tier: tierOf(tier),
    version,
    ttlSeconds: spec.ttlSeconds,
    maxEgressClass: egressClassOf(spec.maxEgressClass),
    allowedPiiTypes: spec.allowedPiiTypes.map(piiTypeOf),
    allowedDestinations: spec.allowedDestinations,
  });
}

/** A verdict of the policy over classified data. */
export interface PolicyDecision {
  allow: boolean;
  reason: string;
}

/** True when `destination` matches one of `patterns` (exact, or "prefix*"); an empty list matches all. */
export function destinationAllowed(patterns: readonly string[], destination: string): boolean {
  return (
    patterns.length === 0 ||
    patterns.some((p) => (p.endsWith("*") ? destination.startsWith(p.slice(0, -1)) : p === destination))
  );
}

/**
 * Applies a policy: air-gapped blocks everything, tier 3 blocks any finding, tiers 1/2 allow
 * only what the policy names (classes, PII types, destinations).
 */
export function evaluatePolicy(
  policy: Policy,
  tier: TierName,
  classification: Classification,
  destination: string,
): PolicyDecision {
  if (tier === "air-gapped") return { allow: false, reason: "air_gapped" };
  if (tier === 3 && classification.findings.length > 0) return { allow: false, reason: "pii_blocked_tier3" };
  if (!destinationAllowed(policy.allowedDestinations, destination))
    return { allow: false, reason: "destination_not_allowed" };
  const allowedTypes = new Set(policy.allowedPiiTypes);
  const notAllowed = classification.findings.find((f) => !allowedTypes.has(f.type));
  if (notAllowed) return { allow: false, reason: "pii_type_not_allowed" };
  if (classification.egressClass > policy.maxEgressClass) return { allow: false, reason: "class_exceeds_policy" };
  return { allow: true, reason: "allowed" };
}
