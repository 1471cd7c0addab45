import {
  ConfigError,
  POLICY_LIST,
  readBool,
  readObject,
  readOptionalString,
  readOptionalStringList,
  readString,
  TENANT_PATTERN,
} from "../common/index.js";
import { parseSpiffeId, parseTrustDomain } from "./spiffe/spiffe-id.js";
import { readRoles, type Principal, type Role } from "./principal.js";
import { parseScopeGrant } from "./scope.js";
import { INVOKE_GRANT_PROBLEM, isInvokeGrant } from "./invoke-grant.js";
import { createSpiffeMatcher, type SpiffeAuthorizer, type SpiffeMatch } from "./spiffe/spiffe-authorizer.js";

/** Maps the SPIFFE ids a rule matches to roles, scopes and a tenant. */
export interface SpiffePrincipalRule {
  match: SpiffeMatch;
  roles: Role[];
  /** Extra scopes beyond the roles'. @default [] */
  scopes?: string[];
  /** Capabilities for attribute rules. @default [] */
  capabilities?: string[];
  /**
   * Invoke grants of the ids the rule matches (Principal.invoke): "*", capability names, or
   * "prefix.*" / "prefix/*". They restrict AGENT principals only. @default [] (no capability)
   */
  invoke?: string[];
  /** A fixed tenant for every id the rule matches. */
  tenant?: string;
  /**
   * Take the tenant from the id's path, /nops/tenant/<tenant>/...; the rule does not match an id
   * without a valid tenant there. @default false
   */
  tenantFromPath?: boolean;
  /**
   * Bind the principal to the agent named in the id's path, /nops/tenant/<tenant>/agent/<name>
   * (Principal.agentId); ids with another shape under the tenant (e.g. .../operator/<name>) are
   * not bound to an agent and get OPERATOR instead of the rule's roles. @default false
   */
  agentFromPath?: boolean;
}

/** How workload SPIFFE ids become principals. */
export interface SpiffePrincipalOptions {
  /** The local trust domain; rules without an explicit one are confined to it. @default "nops.local" */
  trustDomain: string;
  /** First matching rule wins; an id no rule matches gets no roles and no tenant. @default DEFAULT_SPIFFE_RULES */
  rules: SpiffePrincipalRule[];
}

/** The embedded dev issuer's trust domain. */
export const DEFAULT_TRUST_DOMAIN = "nops.local";

/** The SPIFFE ID of agent `name` of `tenant` in the convention the default rules read. */
export function agentSpiffeId(trustDomain: string, tenant: string, name: string): string {
  return `spiffe://${trustDomain}/nops/tenant/${tenant}/agent/${name}`;
}

/**
 * Admins are SUPER_ADMIN (so the dev client SVID spiffe://nops.local/nops/admin/developer is);
 * agents (/nops/tenant/<t>/agent/<name>) are AGENT in their tenant, bound to their name, and may
 * invoke every capability of their tenant ("*": narrow it with a rule per agent id before this one);
 * operators (/nops/tenant/<t>/operator/<name>) are OPERATOR in their tenant.
 */
export const DEFAULT_SPIFFE_RULES: readonly SpiffePrincipalRule[] = [
  { match: { pathPrefix: "/nops/admin" }, roles: ["SUPER_ADMIN"] },
  {
    match: { pathPrefix: "/nops/tenant" },
    roles: ["AGENT"],
    tenantFromPath: true,
    agentFromPath: true,
    invoke: ["*"],
  },
];

/** Defaults for SpiffePrincipalOptions. */
export const DEFAULT_SPIFFE_PRINCIPAL_OPTIONS: Readonly<SpiffePrincipalOptions> = {
  trustDomain: DEFAULT_TRUST_DOMAIN,
  rules: DEFAULT_SPIFFE_RULES.map((r) => ({
    ...r,
    match: { ...r.match },
    roles: [...r.roles],
    ...(r.invoke ? { invoke: [...r.invoke] } : {}),
  })),
};

/** Turns a verified SPIFFE id into a principal. */
export interface SpiffePrincipalMapper {
  /** Throws when `spiffeId` is not a valid SPIFFE id. */
  map(spiffeId: string): Principal;
}

function resolveRule(input: unknown, path: string, trustDomain: string): SpiffePrincipalRule {
  const r = readObject(input, path);
  const m = readObject(r.match, `${path}.match`);
  const match: SpiffeMatch = {};
  const id = readOptionalString(m, "id", `${path}.match`, { nonEmpty: true });
  const oneOf = readOptionalStringList(m, "oneOf", `${path}.match`, POLICY_LIST);
  const td = readOptionalString(m, "trustDomain", `${path}.match`, { nonEmpty: true });
  const pathPrefix = readOptionalString(m, "pathPrefix", `${path}.match`, { nonEmpty: true });
  if (id !== undefined) match.id = id;
  if (oneOf !== undefined) match.oneOf = oneOf;
  if (td !== undefined) match.trustDomain = td;
  if (pathPrefix !== undefined) match.pathPrefix = pathPrefix;
  if (Object.keys(match).length === 0)
    throw new ConfigError(`${path}.match must set id, oneOf, trustDomain or pathPrefix`);
  createSpiffeMatcher(match, trustDomain, `${path}.match`);
  const rule: SpiffePrincipalRule = { match, roles: readRoles(r, "roles", path) ?? [] };
  const scopes = readOptionalStringList(r, "scopes", path, POLICY_LIST);
  scopes?.forEach((s, i) => {
    if (!parseScopeGrant(s)) throw new ConfigError(`${path}.scopes[${i}] is not a scope: ${JSON.stringify(s)}`);
  });
  if (scopes) rule.scopes = scopes;
  const capabilities = readOptionalStringList(r, "capabilities", path, POLICY_LIST);
  if (capabilities) rule.capabilities = capabilities;
  const invoke = readOptionalStringList(r, "invoke", path, POLICY_LIST);
  invoke?.forEach((g, i) => {
    if (!isInvokeGrant(g)) throw new ConfigError(`${path}.invoke[${i}] ${INVOKE_GRANT_PROBLEM}: ${JSON.stringify(g)}`);
  });
  if (invoke) rule.invoke = invoke;
  const tenant = readOptionalString(r, "tenant", path, { nonEmpty: true });
  if (tenant !== undefined && !TENANT_PATTERN.test(tenant)) throw new ConfigError(`${path}.tenant is not a tenant id`);
  const fromPath = readBool(r, "tenantFromPath", path, false);
  if (readBool(r, "agentFromPath", path, false)) {
    if (!fromPath) throw new ConfigError(`${path}.agentFromPath needs tenantFromPath`);
    rule.agentFromPath = true;
  }
  if (tenant !== undefined && fromPath) throw new ConfigError(`${path}: set tenant or tenantFromPath, not both`);
  if (tenant !== undefined) rule.tenant = tenant;
  if (fromPath) rule.tenantFromPath = true;
  return rule;
}

/** Validates a partial config over the defaults; throws ConfigError naming the field. */
export function resolveSpiffePrincipalOptions(input: unknown, path = "identity.spiffe"): SpiffePrincipalOptions {
  const o = readObject(input, path);
  const trustDomain = readString(o, "trustDomain", path, DEFAULT_SPIFFE_PRINCIPAL_OPTIONS.trustDomain, {
    nonEmpty: true,
  });
  try {
    parseTrustDomain(trustDomain);
  } catch (e) {
    throw new ConfigError(`${path}.trustDomain is not a SPIFFE trust domain`, { cause: e });
  }
  if (o.rules !== undefined && !Array.isArray(o.rules)) throw new ConfigError(`${path}.rules must be a list`);
  const rules =
    o.rules === undefined
      ? DEFAULT_SPIFFE_PRINCIPAL_OPTIONS.rules
      : (o.rules as unknown[]).map((r, i) => resolveRule(r, `${path}.rules[${i}]`, trustDomain));
  return { trustDomain, rules };
}

// ids.md: an agent is spiffe://<td>/nops/tenant/<tenant>/agent/<name>.
const TENANT_PATH = /^\/nops\/tenant\/([^/]+)(?:\/|$)/;
const AGENT_PATH = /^\/nops\/tenant\/[^/]+\/agent\/([^/]+)$/;
const OPERATOR_PATH = /^\/nops\/tenant\/[^/]+\/operator\/[^/]+$/;

/**
 * Creates the mapper. Principals are memoised per id (bounded by `maxCached`) so that the
 * same object reaches authz on every call and its parsed grants are reused.
 */
export function createSpiffePrincipalMapper(
  options: SpiffePrincipalOptions,
  maxCached = 10_000,
): SpiffePrincipalMapper {
  const compiled: { rule: SpiffePrincipalRule; matches: SpiffeAuthorizer }[] = options.rules.map((rule, i) => ({
    rule,
    matches: createSpiffeMatcher(rule.match, options.trustDomain, `rules[${i}].match`),
  }));
  const cache = new Map<string, Principal>();

  function build(spiffeId: string): Principal {
    const id = parseSpiffeId(spiffeId);
    for (const { rule, matches } of compiled) {
      if (!matches(id)) continue;
      let tenant = rule.tenant;
      if (rule.tenantFromPath) {
        tenant = TENANT_PATH.exec(id.path)?.[1];
        if (tenant === undefined || !TENANT_PATTERN.test(tenant)) continue;
      }
      if (rule.agentFromPath) {
        const agent = AGENT_PATH.exec(id.path)?.[1];
        if (agent !== undefined)
          return {
            kind: "spiffe",
            id: id.id,
            tenant,
            roles: rule.roles,
            scopes: rule.scopes ?? [],
            capabilities: rule.capabilities ?? [],
            invoke: rule.invoke ?? [],
            agentId: agent,
          };
        // Only a tenant's operator id gets a wider role; any other shape gets nothing.
        if (!OPERATOR_PATH.test(id.path)) continue;
        return {
          kind: "spiffe",
          id: id.id,
          tenant,
          roles: ["OPERATOR"],
          scopes: rule.scopes ?? [],
          capabilities: rule.capabilities ?? [],
        };
      }
      return {
        kind: "spiffe",
        id: id.id,
        tenant,
        roles: rule.roles,
        scopes: rule.scopes ?? [],
        capabilities: rule.capabilities ?? [],
        invoke: rule.invoke ?? [],
      };
    }
    return { kind: "spiffe", id: id.id, tenant: undefined, roles: [], scopes: [], capabilities: [] };
  }

  return {
    map(spiffeId) {
      let p = cache.get(spiffeId);
      if (!p) {
        p = build(spiffeId);
        if (cache.size >= maxCached) cache.clear();
        cache.set(spiffeId, p);
      }
      return p;
    },
  };
}
