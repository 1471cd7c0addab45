import { ConfigError, TENANT_PATTERN, type Clock } from "../common/index.js";
import type { AuditLog } from "../audit/index.js";
import { CommandRejectedError } from "../events/index.js";
import { egressClassName, piiKindOf, type EgressGuard } from "../egress/index.js";
import type { Db } from "../store/index.js";
import type { Logger } from "../telemetry/index.js";
import {
  DEFAULT_DGE_POLICY,
  resolveDgePolicySpec,
  type DgePoliciesOptions,
  type DgePolicySpec,
  type DgeServer,
} from "../../packages/reference-dge/src/index.js";
import { EgressClass, Tier } from "../../gen/nops/dge/v1/dge_pb.js";
import type { SetDgePolicyCommand } from "../../gen/nops/events/v1/kernel_command_pb.js";

type TierKey = "1" | "2" | "3";

/** A policy the hub set: for one tenant, or a tier's default (tenant ""), at one tier. */
export interface HubDgePolicy {
  tenant: string;
  tier: TierKey;
  spec: DgePolicySpec;
}

/** The embedded DGE's policies: the config file's, with the policies the hub set on top. */
export interface HubDgePolicies {
  /**
   * Validates a set_dge_policy command as config is validated, persists and audits it; runs inside the
   * command's transaction and throws CommandRejectedError (nothing written) when it is refused. Returns
   * what to run once that transaction committed: hand the new policies to the DGE, drop the guard's copies.
   */
  apply(command: SetDgePolicyCommand, ctx: { commandId: string; actor: string }): () => void;
}

const TIER_KEYS: Partial<Record<Tier, TierKey>> = { [Tier.TIER_1]: "1", [Tier.TIER_2]: "2", [Tier.TIER_3]: "3" };

/**
 * Precedence for a tenant at a tier, most specific first, the hub before the config file at the same
 * level: hub tenant policy, config tenant policy, hub tier default, config tier default. A config tenant
 * policy is complete once loaded (its missing fields came from the config file's tier default).
 */
export function withHubDgePolicies(config: DgePoliciesOptions, hub: readonly HubDgePolicy[]): DgePoliciesOptions {
  const tiers = { ...config.tiers };
  const tenants: DgePoliciesOptions["tenants"] = { ...config.tenants };
  for (const p of hub) {
    if (p.tenant === "") tiers[p.tier] = p.spec;
    else tenants[p.tenant] = { ...tenants[p.tenant], [p.tier]: p.spec };
  }
  return { tiers, tenants };
}

/**
 * The policy a set_dge_policy command sets, validated by the config file's own rules
 * (resolveDgePolicySpec); CommandRejectedError names the bad field. The command carries a complete policy.
 */
export function dgePolicyOfCommand(
  c: SetDgePolicyCommand,
): HubDgePolicy | { clear: true; tenant: string; tier: TierKey } {
  const tier = TIER_KEYS[c.tier];
  if (tier === undefined) throw new CommandRejectedError("set_dge_policy.tier: must be TIER_1, TIER_2 or TIER_3");
  if (c.tenant !== "" && !TENANT_PATTERN.test(c.tenant))
    throw new CommandRejectedError("set_dge_policy.tenant: is not a tenant id");
  if (c.clear) {
    if (
      c.maxEgressClass !== EgressClass.UNSPECIFIED ||
      c.allowedPiiTypes.length > 0 ||
      c.allowedDestinations.length > 0 ||
      c.ttlSeconds !== 0
    )
      throw new CommandRejectedError("set_dge_policy.clear: the policy fields must be empty when clearing");
    return { clear: true, tenant: c.tenant, tier };
  }
  const maxEgressClass = egressClassName(c.maxEgressClass);
  if (maxEgressClass === "")
    throw new CommandRejectedError("set_dge_policy.max_egress_class: must be one of D0, D1, D2, D3, D4");
  try {
    const spec = resolveDgePolicySpec(
      {
        maxEgressClass,
        allowedPiiTypes: c.allowedPiiTypes.map(piiKindOf),
        allowedDestinations: c.allowedDestinations,
        ttlSeconds: c.ttlSeconds,
      },
      "set_dge_policy",
      DEFAULT_DGE_POLICY,
    );
    return { tenant: c.tenant, tier, spec };
  } catch (err) {
    if (err instanceof ConfigError) throw new CommandRejectedError(err.message);
    throw err;
  }
}

/** The embedded DGE's policies at start: `config` with the hub's persisted policies on top. */
export function loadHubDgePolicies(db: Db, config: DgePoliciesOptions): DgePoliciesOptions {
  const rows = db
    .prepare<
      [],
      { tenant: string; tier: TierKey; spec: string }
    >("SELECT tenant, tier, spec FROM dge_policy_overrides ORDER BY tenant, tier")
    .all();
  return withHubDgePolicies(
    config,
    rows.map((r) => ({ tenant: r.tenant, tier: r.tier, spec: JSON.parse(r.spec) as DgePolicySpec })),
  );
}

/**
 * Creates the hub's DGE policies over SQLite (dge_policy_overrides, migration 0012). After each commit the
 * DGE gets the new policies and the guard drops its cached copies of the tenant (every tenant for a tier
 * default), so a tightened policy applies to the next call, not after the cache TTL.
 */
export function createHubDgePolicies(
  deps: {
    db: Db;
    audit: AuditLog;
    clock: Clock;
    logger: Logger;
    /** The embedded DGE; absent while it is disabled (dge.enabled false): the policies still persist. */
    dge?: Pick<DgeServer, "setPolicies">;
    guard: Pick<EgressGuard, "invalidate">;
  },
  config: DgePoliciesOptions,
): HubDgePolicies {
  const { db, audit, clock } = deps;
  const upsert = db.prepare<[string, string, string, string, number]>(
    `INSERT INTO dge_policy_overrides (tenant, tier, spec, command_id, updated_at) VALUES (?, ?, ?, ?, ?)
     ON CONFLICT (tenant, tier) DO UPDATE SET spec = excluded.spec, command_id = excluded.command_id,
       updated_at = excluded.updated_at`,
  );
  const remove = db.prepare<[string, string]>("DELETE FROM dge_policy_overrides WHERE tenant = ? AND tier = ?");

  return {
    apply(command, { commandId, actor }) {
      const p = dgePolicyOfCommand(command);
      const scope = p.tenant === "" ? `tier ${p.tier} default` : `tenant ${p.tenant} at tier ${p.tier}`;
      if ("clear" in p) {
        if (remove.run(p.tenant, p.tier).changes === 0)
          throw new CommandRejectedError(`set_dge_policy.clear: the hub set no policy for ${scope}`);
      } else upsert.run(p.tenant, p.tier, JSON.stringify(p.spec), commandId, clock.now());
      audit.append({
        actor,
        action: "clear" in p ? "dge.policy.clear" : "dge.policy.set",
        tenant: p.tenant,
        resource: `dge-policy/${p.tenant || "*"}/${p.tier}`,
        outcome: "ok",
        details: { command: commandId, ...("spec" in p ? { policy: p.spec } : {}) },
      });
      const next = loadHubDgePolicies(db, config);
      return () => {
        deps.dge?.setPolicies(next);
        deps.guard
          .invalidate(p.tenant, `hub set_dge_policy ${commandId}`)
          .catch((err: unknown) => deps.logger.warn({ err, tenant: p.tenant }, "cached DGE policies not dropped"));
      };
    },
  };
}
