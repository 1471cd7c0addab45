import type { Principal } from "./principal.js";

// The capability grammar of RoutingService (routing-service.ts): 1-128 of [A-Za-z0-9._/-].
const NAME = /^[A-Za-z0-9][A-Za-z0-9._/-]{0,127}$/;

/** What an invoke grant may look like, for error messages. */
export const INVOKE_GRANT_PROBLEM =
  'must be "*", a capability name, or a prefix ending in ".*" or "/*" (e.g. "billing.*")';

/**
 * True when `grant` is a well-formed invoke grant: exactly "*" (every capability of the tenant),
 * a capability name (that capability), or a name followed by ".*" or "/*" (every capability whose
 * name starts with that name and separator). There are no other globs: "bill*" is malformed, so a
 * typo never widens a grant.
 */
export function isInvokeGrant(grant: string): boolean {
  if (grant === "*") return true;
  if (grant.endsWith(".*") || grant.endsWith("/*")) return NAME.test(grant.slice(0, -2));
  return NAME.test(grant);
}

/** True when the grant covers invoking `capability`. Malformed grants cover nothing. */
export function invokeGrantAllows(grant: string, capability: string): boolean {
  if (grant === "*") return true;
  if (!isInvokeGrant(grant)) return false;
  if (grant.endsWith("*")) return capability.startsWith(grant.slice(0, -1));
  return grant === capability;
}

/**
 * True when grant `inner` asks for nothing beyond grant `outer`: used to cap what a JWT issuer
 * may hand out (an issuer allowed "billing.*" may grant "billing.pay" and "billing.refund.*").
 */
export function invokeGrantCovers(outer: string, inner: string): boolean {
  if (!isInvokeGrant(outer) || !isInvokeGrant(inner)) return false;
  if (outer === "*") return true;
  if (inner === "*") return false;
  if (!outer.endsWith("*")) return outer === inner;
  return inner.startsWith(outer.slice(0, -1));
}

/**
 * True when invoke grants restrict the principal: a KERNEL_PEER (grants from its agreement), or
 * one holding the AGENT role and no role that administers the tenant (OPERATOR, ADMIN,
 * SUPER_ADMIN). Other principals reach capabilities through their scopes alone.
 */
export function invokeRestricted(principal: Principal): boolean {
  if (principal.kind === "kernel-peer") return true;
  return (
    principal.roles.includes("AGENT") &&
    !principal.roles.some((r) => r === "SUPER_ADMIN" || r === "ADMIN" || r === "OPERATOR")
  );
}

/**
 * Whether the principal may invoke `capability` (Route, Invoke, InvokeStream and anything else
 * that reaches an agent by capability). An AGENT principal needs a grant covering the capability;
 * no grants (undefined or empty) means no capability at all.
 */
export function mayInvoke(principal: Principal, capability: string): boolean {
  if (!invokeRestricted(principal)) return true;
  return (principal.invoke ?? []).some((g) => invokeGrantAllows(g, capability));
}
