import {
  ConfigError,
  readBool,
  readObject,
  readOptionalStringList,
  readSection,
  readStringList,
  POLICY_LIST,
  TENANT_PATTERN,
} from "../common/index.js";
import { ROLES, isRole, readRoles, type Role, parseRequiredScope, parseScopeGrant } from "../identity/index.js";
import { DEFAULT_PUBLIC_METHODS, checkMethodPattern } from "../server/index.js";

/**
 * An attribute rule. Every condition given must hold for the rule to apply. A matching "deny"
 * refuses the call whatever the scopes say; a matching "allow" grants the method without a
 * scope. Neither changes tenant isolation.
 */
export interface AttributeRule {
  effect: "allow" | "deny";
  /** Method patterns: "*", "/pkg.Service/*" or "/pkg.Service/Method". */
  methods: string[];
  /** The principal holds at least one of these roles. */
  roles?: Role[];
  /** "deny": the request targets at least one of these tenants; "allow": it targets only these. */
  tenants?: string[];
  /** The principal holds every one of these capabilities. */
  capabilities?: string[];
}

/** Authorization policy. */
export interface AuthzOptions {
  /**
   * Required scope ("service/operation") per method pattern; user entries are merged over the
   * defaults. A method no pattern covers may be called by SUPER_ADMIN only.
   * @default DEFAULT_METHOD_SCOPES
   */
  methodScopes: Record<string, string>;
  /** Scopes each role holds; a role given replaces that role's defaults. @default DEFAULT_ROLE_SCOPES */
  roleScopes: Record<Role, string[]>;
  /** Attribute rules, evaluated in order (deny wins over allow). @default [] */
  rules: AttributeRule[];
  /** Methods that need no principal. @default DEFAULT_PUBLIC_METHODS */
  publicMethods: string[];
  /**
   * Let calls without a principal through (plaintext development ports; pair with the authn
   * interceptor's allowAnonymous). @default false
   */
  allowAnonymous: boolean;
  /**
   * Methods that reach an agent by capability: the request's top-level `capability` field must
   * be covered by the principal's invoke grants when the principal is an AGENT (docs/identity.md).
   * @default DEFAULT_INVOKE_METHODS
   */
  invokeMethods: string[];
}

/** The kernel's methods that reach an agent by the request's `capability`. */
export const DEFAULT_INVOKE_METHODS: readonly string[] = [
  "/nops.kernel.v1.RoutingService/Route",
  "/nops.kernel.v1.RoutingService/Invoke",
  "/nops.kernel.v1.RoutingService/InvokeStream",
];

/** Kernel methods and the scope each requires. */
export const DEFAULT_METHOD_SCOPES: Readonly<Record<string, string>> = {
  "/nops.kernel.v1.AgentRegistryService/RegisterAgent": "registry/write",
  "/nops.kernel.v1.AgentRegistryService/UpdateAgent": "registry/write",
  "/nops.kernel.v1.AgentRegistryService/DeregisterAgent": "registry/write",
  "/nops.kernel.v1.AgentRegistryService/Heartbeat": "registry/write",
  "/nops.kernel.v1.AgentRegistryService/GetAgent": "registry/read",
  "/nops.kernel.v1.AgentRegistryService/ListAgents": "registry/read",
  "/nops.kernel.v1.AgentRegistryService/WatchAgents": "registry/read",
  "/nops.kernel.v1.ApiKeyService/CreateApiKey": "apikeys/write",
  // Its own scope so an agent can hold it without apikeys/write; the service lets a non-admin
  // rotate only the key it is calling with.
  "/nops.kernel.v1.ApiKeyService/RotateApiKey": "apikeys/rotate",
  "/nops.kernel.v1.ApiKeyService/RevokeApiKey": "apikeys/write",
  "/nops.kernel.v1.ApiKeyService/ListApiKeys": "apikeys/read",
  "/nops.kernel.v1.RoutingService/Route": "routing/route",
  "/nops.kernel.v1.RoutingService/Invoke": "routing/invoke",
  "/nops.kernel.v1.RoutingService/InvokeStream": "routing/invoke",
  "/nops.kernel.v1.EventBusService/Publish": "events/publish",
  "/nops.kernel.v1.EventBusService/Subscribe": "events/subscribe",
  "/nops.kernel.v1.EventBusService/Ack": "events/subscribe",
  "/nops.kernel.v1.EventBusService/ListDeadLetters": "events/read",
  "/nops.kernel.v1.EventBusService/Reprocess": "events/admin",
  "/nops.kernel.v1.AuditService/GetCheckpoint": "audit/read",
  "/nops.kernel.v1.AuditService/GetInclusionProof": "audit/read",
  "/nops.kernel.v1.AuditService/GetConsistencyProof": "audit/read",
  "/nops.kernel.v1.AuditService/ListEntries": "audit/read",
};

/** What an agent needs to work: its registry entry, its tenant's events, invoking others, its own key. */
export const AGENT_SCOPES: readonly string[] = [
  "registry/write",
  "registry/read",
  "events/publish",
  "events/subscribe",
  "routing/route",
  "routing/invoke",
  "apikeys/rotate",
];

/** What each role may do (tenant-bound roles stay inside their tenant whatever the scope says). */
export const DEFAULT_ROLE_SCOPES: Readonly<Record<Role, readonly string[]>> = {
  SUPER_ADMIN: ["*/*/*"],
  ADMIN: ["*/*/*"],
  OPERATOR: ["registry/*/*", "events/*/*", "routing/*/*"],
  AGENT: AGENT_SCOPES,
  VIEWER: ["registry/read/*"],
};

/** Defaults: the kernel's method map and role scopes, no attribute rules, no anonymous calls. */
export const DEFAULT_AUTHZ_OPTIONS: Readonly<AuthzOptions> = {
  methodScopes: { ...DEFAULT_METHOD_SCOPES },
  roleScopes: Object.fromEntries(ROLES.map((r) => [r, [...DEFAULT_ROLE_SCOPES[r]]])) as Record<Role, string[]>,
  rules: [],
  publicMethods: [...DEFAULT_PUBLIC_METHODS],
  allowAnonymous: false,
  invokeMethods: [...DEFAULT_INVOKE_METHODS],
};

function checkGrants(scopes: string[], field: string): string[] {
  scopes.forEach((s, i) => {
    if (!parseScopeGrant(s))
      throw new ConfigError(
        `${field}[${i}] is not a scope ("service/operation[/tenant]", parts a name or "*"): ${JSON.stringify(s)}`,
      );
  });
  return scopes;
}

// Every key a rule may have: a misspelt "roles" would otherwise widen the rule to every caller.
const RULE_KEYS = { effect: "", methods: [], tenants: [], roles: [], capabilities: [] };

function resolveRule(input: unknown, path: string): AttributeRule {
  const r = readSection(input, path, RULE_KEYS);
  const effect = r.effect;
  if (effect !== "allow" && effect !== "deny") throw new ConfigError(`${path}.effect must be "allow" or "deny"`);
  const methods = readStringList(r, "methods", path, [], { ...POLICY_LIST, minItems: 1 });
  methods.forEach((m, i) => checkMethodPattern(m, `${path}.methods[${i}]`));
  const tenants = readOptionalStringList(r, "tenants", path, POLICY_LIST);
  tenants?.forEach((t, i) => {
    if (!TENANT_PATTERN.test(t)) throw new ConfigError(`${path}.tenants[${i}] is not a tenant id`);
  });
  const rule: AttributeRule = { effect, methods };
  const roles = readRoles(r, "roles", path);
  const capabilities = readOptionalStringList(r, "capabilities", path, POLICY_LIST);
  if (roles) rule.roles = roles;
  if (tenants) rule.tenants = tenants;
  if (capabilities) rule.capabilities = capabilities;
  return rule;
}

/** Validates a partial authz config over the defaults; throws ConfigError naming the field. */
export function resolveAuthzOptions(input: unknown, path = "authz"): AuthzOptions {
  const o = readSection(input, path, DEFAULT_AUTHZ_OPTIONS);
  const methodScopes = { ...DEFAULT_AUTHZ_OPTIONS.methodScopes };
  for (const [pattern, scope] of Object.entries(readObject(o.methodScopes, `${path}.methodScopes`))) {
    const field = `${path}.methodScopes[${JSON.stringify(pattern)}]`;
    checkMethodPattern(pattern, field);
    if (typeof scope !== "string" || !parseRequiredScope(scope))
      throw new ConfigError(`${field} must be a scope "service/operation"`);
    methodScopes[pattern] = scope;
  }
  const roleScopes = { ...DEFAULT_AUTHZ_OPTIONS.roleScopes };
  const rs = readObject(o.roleScopes, `${path}.roleScopes`);
  for (const key of Object.keys(rs)) {
    if (!isRole(key)) throw new ConfigError(`${path}.roleScopes.${key} is not a role (${ROLES.join(", ")})`);
    roleScopes[key] = checkGrants(
      readStringList(rs, key, `${path}.roleScopes`, [], POLICY_LIST),
      `${path}.roleScopes.${key}`,
    );
  }
  if (o.rules !== undefined && !Array.isArray(o.rules)) throw new ConfigError(`${path}.rules must be a list`);
  const rules = ((o.rules as unknown[] | undefined) ?? []).map((r, i) => resolveRule(r, `${path}.rules[${i}]`));
  const publicMethods = readStringList(o, "publicMethods", path, DEFAULT_AUTHZ_OPTIONS.publicMethods, POLICY_LIST);
  publicMethods.forEach((m, i) => checkMethodPattern(m, `${path}.publicMethods[${i}]`));
  const allowAnonymous = readBool(o, "allowAnonymous", path, DEFAULT_AUTHZ_OPTIONS.allowAnonymous);
  const invokeMethods = readStringList(o, "invokeMethods", path, DEFAULT_AUTHZ_OPTIONS.invokeMethods, POLICY_LIST);
  invokeMethods.forEach((m, i) => checkMethodPattern(m, `${path}.invokeMethods[${i}]`));
  return { methodScopes, roleScopes, rules, publicMethods, allowAnonymous, invokeMethods };
}
