import { createContextKey } from "@connectrpc/connect";
import { KernelError, POLICY_LIST, readOptionalStringList, type RawSection } from "../common/index.js";

/** Kernel roles, most powerful first (AGENT is narrower than OPERATOR, not comparable to VIEWER). */
export const ROLES = ["SUPER_ADMIN", "ADMIN", "OPERATOR", "AGENT", "VIEWER"] as const;

/** One kernel role. SUPER_ADMIN is the only role that may act on every tenant. */
export type Role = (typeof ROLES)[number];

/** Who is calling, as established by the authn interceptor and read by authz and handlers. */
export interface Principal {
  /** Which credential established it. */
  readonly kind: "spiffe" | "jwt" | "apikey" | "signed" | "kernel-peer";
  /**
   * Actor string for the audit trail: the SPIFFE id, "jwt:<sub>", "apikey:<keyId>" or "signed:<keyId>";
   * for a KERNEL_PEER (a federated kernel, docs/federation.md) the peer kernel's SPIFFE id.
   */
  readonly id: string;
  /**
   * The one tenant this principal acts for. `undefined` means every tenant, and is honoured only
   * together with the SUPER_ADMIN role; any other principal without a tenant reaches no tenant.
   */
  readonly tenant: string | undefined;
  readonly roles: readonly Role[];
  /** Granted scopes, "service/operation[/tenant]" (see src/authz/scope.ts). */
  readonly scopes: readonly string[];
  /** Capabilities the principal holds, for attribute rules. */
  readonly capabilities: readonly string[];
  /**
   * The one agent the credential is bound to, for handlers that care: an agent API key's agent_id,
   * or the <name> of an agent SVID (spiffe://<td>/nops/tenant/<tenant>/agent/<name>). The registry
   * compares it with the agent's name.
   */
  readonly agentId?: string;
  /**
   * Invoke grants: the capabilities an AGENT principal may invoke ("*", a capability name, or a
   * "prefix.*" / "prefix/*" pattern; see invoke-grant.ts). Undefined or empty: none. Operators and
   * admins are not restricted by it. From the API key, the SPIFFE rule or the JWT (capped by its issuer).
   */
  readonly invoke?: readonly string[];
  /**
   * KERNEL_PEER only: the verified delegation the peer presented (RFC 8693 token exchange): the
   * principal on the origin kernel the call is made for, and how many kernels the call crossed.
   */
  readonly delegation?: { readonly originalPrincipal: string; readonly hops: number };
}

/** Per-request value: the authenticated caller, or undefined (public method, anonymous port). */
export const kPrincipal = createContextKey<Principal | undefined>(undefined, { description: "principal" });

/** True when the string names a kernel role. */
export function isRole(value: unknown): value is Role {
  return typeof value === "string" && (ROLES as readonly string[]).includes(value);
}

/** Reads an optional list of role names. */
export function readRoles(obj: RawSection, key: string, path: string): Role[] | undefined {
  return readOptionalStringList(obj, key, path, { ...POLICY_LIST, oneOf: ROLES }) as Role[] | undefined;
}

/** True when the principal may act on every tenant: SUPER_ADMIN and not tenant-bound. */
export function isAllTenants(principal: Principal): boolean {
  return principal.tenant === undefined && principal.roles.includes("SUPER_ADMIN");
}

/** A credential was presented and rejected; the reason is for logs and audit, never the client. */
export class CredentialError extends KernelError {
  override name = "CredentialError";
}
