import {
  isAllTenants,
  type Principal,
  type Role,
  grantAllows,
  parseRequiredScope,
  parseScopeGrant,
  type RequiredScope,
  type ScopeGrant,
} from "../identity/index.js";
import type { AttributeRule, AuthzOptions } from "./authz-options.js";
import { methodMatches } from "../server/index.js";
import type { TenantTargets } from "./tenant-extractor.js";

/** The outcome of one check; `reason` is for the audit trail and logs, never for the client. */
export type Decision = { readonly allowed: true } | { readonly allowed: false; readonly reason: string };

/** Decides whether a principal may call a method for the tenants the request targets. */
export interface Authorizer {
  decide(principal: Principal, path: string, targets: TenantTargets): Decision;
}

interface MethodPolicy {
  /** undefined: the method is not mapped, SUPER_ADMIN only. */
  required: RequiredScope | undefined;
  allow: AttributeRule[];
  deny: AttributeRule[];
}

const ALLOWED: Decision = { allowed: true };

function deny(reason: string): Decision {
  return { allowed: false, reason };
}

function ruleApplies(rule: AttributeRule, principal: Principal, tenants: readonly string[]): boolean {
  if (rule.roles && !rule.roles.some((r) => principal.roles.includes(r))) return false;
  if (rule.capabilities && !rule.capabilities.every((c) => principal.capabilities.includes(c))) return false;
  if (rule.tenants) {
    const listed = rule.tenants;
    // A deny bites if any targeted tenant is listed; an allow only if every one is.
    if (
      rule.effect === "deny"
        ? !tenants.some((t) => listed.includes(t))
        : tenants.length === 0 || !tenants.every((t) => listed.includes(t))
    )
      return false;
  }
  return true;
}

/** Looks a method's required scope up: exact path, then "/pkg.Service/*", then "*". */
function requiredScopeFor(methodScopes: Record<string, string>, path: string): RequiredScope | undefined {
  const service = path.slice(0, path.lastIndexOf("/") + 1);
  const scope = methodScopes[path] ?? methodScopes[`${service}*`] ?? methodScopes["*"];
  return scope === undefined ? undefined : parseRequiredScope(scope);
}

/**
 * Creates the authorizer. Order of checks: deny rules, tenant isolation, then the method's
 * scope (or an allow rule). Policies are compiled once per method and grants once per principal
 * object, so the per-call cost is a few comparisons.
 */
export function createAuthorizer(options: AuthzOptions): Authorizer {
  const policies = new Map<string, MethodPolicy>();
  const roleGrants = new Map<Role, ScopeGrant[]>();
  for (const [role, scopes] of Object.entries(options.roleScopes) as [Role, string[]][]) {
    roleGrants.set(
      role,
      scopes.map(parseScopeGrant).filter((g): g is ScopeGrant => g !== undefined),
    );
  }
  const principalGrants = new WeakMap<Principal, ScopeGrant[]>();

  function policyFor(path: string): MethodPolicy {
    let p = policies.get(path);
    if (!p) {
      const rules = options.rules.filter((r) => r.methods.some((m) => methodMatches(m, path)));
      p = {
        required: requiredScopeFor(options.methodScopes, path),
        allow: rules.filter((r) => r.effect === "allow"),
        deny: rules.filter((r) => r.effect === "deny"),
      };
      policies.set(path, p);
    }
    return p;
  }

  function grantsOf(principal: Principal): ScopeGrant[] {
    let grants = principalGrants.get(principal);
    if (!grants) {
      // Malformed scopes in a token are ignored, never treated as wider grants.
      grants = principal.scopes.map(parseScopeGrant).filter((g): g is ScopeGrant => g !== undefined);
      for (const role of principal.roles) grants.push(...(roleGrants.get(role) ?? []));
      principalGrants.set(principal, grants);
    }
    return grants;
  }

  return {
    decide(principal, path, targets) {
      const policy = policyFor(path);
      const tenants = targets.tenants;
      for (const rule of policy.deny) {
        if (ruleApplies(rule, principal, tenants)) return deny("denied by an attribute rule");
      }
      if (targets.hasField && !isAllTenants(principal)) {
        if (principal.tenant === undefined) return deny("principal is bound to no tenant");
        if (tenants.length === 0) return deny("request names no tenant");
        for (const t of tenants)
          if (t !== principal.tenant) return deny(`tenant ${t} is not the principal's tenant ${principal.tenant}`);
      }
      if (policy.allow.some((rule) => ruleApplies(rule, principal, tenants))) return ALLOWED;
      const required = policy.required;
      if (!required)
        return principal.roles.includes("SUPER_ADMIN")
          ? ALLOWED
          : deny("method is not mapped to a scope: SUPER_ADMIN only");
      const grants = grantsOf(principal);
      const scopeTenants: readonly (string | undefined)[] = tenants.length > 0 ? tenants : [undefined];
      for (const t of scopeTenants) {
        if (!grants.some((g) => grantAllows(g, required, t))) {
          return deny(`no scope grants ${required.service}/${required.operation}${t === undefined ? "" : `/${t}`}`);
        }
      }
      return ALLOWED;
    },
  };
}
