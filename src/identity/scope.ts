import { TENANT_PATTERN } from "../common/index.js";

/** A granted scope, parsed: each part is a literal or "*" (any). */
export interface ScopeGrant {
  readonly service: string;
  readonly operation: string;
  readonly tenant: string;
}

/** What a method requires: "service/operation"; the tenant comes from the request. */
export interface RequiredScope {
  readonly service: string;
  readonly operation: string;
}

const NAME_PATTERN = /^[a-z0-9][a-z0-9_.-]{0,62}$/;
const ANY = "*";

function validPart(part: string): boolean {
  return part === ANY || NAME_PATTERN.test(part);
}

/**
 * Parses a granted scope, "service/operation/tenant" or "service/operation" (tenant "*"), each
 * part a name or "*". Returns undefined when malformed: partial globs such as "reg*" are not
 * patterns, so a typo can never widen a grant.
 */
export function parseScopeGrant(scope: string): ScopeGrant | undefined {
  const parts = scope.split("/");
  if (parts.length !== 2 && parts.length !== 3) return undefined;
  const [service = "", operation = "", tenant = ANY] = parts;
  if (!validPart(service) || !validPart(operation)) return undefined;
  if (tenant !== ANY && !TENANT_PATTERN.test(tenant)) return undefined;
  return { service, operation, tenant };
}

/** Parses a method's required scope, exactly "service/operation" with no wildcard. */
export function parseRequiredScope(scope: string): RequiredScope | undefined {
  const parts = scope.split("/");
  if (parts.length !== 2) return undefined;
  const [service = "", operation = ""] = parts;
  if (!NAME_PATTERN.test(service) || !NAME_PATTERN.test(operation)) return undefined;
  return { service, operation };
}

/**
 * True when `grant` covers `required` for `tenant` (the tenant the request targets, or
 * undefined when it targets none). A grant naming a tenant covers only requests for that tenant;
 * a request that targets no tenant needs "*" in the tenant part. Scopes never widen tenant
 * isolation, which authz checks separately.
 */
export function grantAllows(grant: ScopeGrant, required: RequiredScope, tenant: string | undefined): boolean {
  if (grant.service !== ANY && grant.service !== required.service) return false;
  if (grant.operation !== ANY && grant.operation !== required.operation) return false;
  if (grant.tenant === ANY) return true;
  return tenant !== undefined && grant.tenant === tenant;
}
