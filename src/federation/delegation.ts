import { randomBytes } from "node:crypto";
import type { Clock } from "../common/index.js";
import type { AuditLog } from "../audit/index.js";
import { claimedSigner, FederationRefusal, signWithSvid, verifySvidJws, type SigningIdentity } from "./kernel-jws.js";
import type { PeerRegistry } from "./peer-registry.js";

/** JWS type of a delegation. */
export const DELEGATION_JWS_TYPE = "nops-delegation+jwt";

/**
 * The claims of a delegation: a token exchange in the sense of RFC 8693. The origin kernel (`iss`,
 * also the actor `act.sub`, §4.1) acts for `sub`, the original principal, in `tenant`, towards one
 * target kernel (`aud`), briefly (`exp`), once (`jti`).
 */
export interface DelegationClaims {
  iss: string;
  sub: string;
  aud: string;
  tenant: string;
  act: { sub: string };
  iat: number;
  exp: number;
  jti: string;
}

/** What a verified delegation establishes. */
export interface Delegation {
  originKernel: string;
  originalPrincipal: string;
  tenant: string;
  expiresAt: number;
}

/** Options of delegations. */
export interface DelegationOptions {
  /** Lifetime of an issued delegation, seconds. @default 30 */
  ttlSeconds: number;
  /** Longest lifetime accepted from a peer, seconds. @default 120 */
  maxTtlSeconds: number;
  /** Delegation ids remembered at most (replay protection); beyond it delegations are refused. @default 100000 */
  maxRemembered: number;
}

/** Defaults of DelegationOptions. */
export const DEFAULT_DELEGATION_OPTIONS: Readonly<DelegationOptions> = {
  ttlSeconds: 30,
  maxTtlSeconds: 120,
  maxRemembered: 100_000,
};

/** A signed delegation and when it expires (ms since the epoch). */
export interface IssuedDelegation {
  token: string;
  expiresAt: number;
}

/** Issues delegations to peers and verifies those peers present. */
export interface Delegations {
  /** Signs a delegation for a call to `audience` on behalf of `principal` in `tenant` (outbound agreement). */
  issue(input: { audience: string; tenant: string; principal: string }): Promise<IssuedDelegation>;
  /**
   * Verifies a delegation presented by `presenter` (the mTLS-authenticated peer kernel). Wrong
   * audience, a signer other than the presenter, or a tenant outside the inbound agreement is
   * PERMISSION_DENIED; expired, replayed, forged or malformed is UNAUTHENTICATED. Refusals are
   * audited as "federation.delegation".
   */
  verify(token: string, presenter: string): Promise<Delegation>;
}

/** Creates the delegation issuer and verifier of this kernel. */
export function createDelegations(
  deps: { registry: PeerRegistry; audit: AuditLog; clock: Clock; identity: () => SigningIdentity },
  options: DelegationOptions,
): Delegations {
  const { registry, audit, clock } = deps;
  // Delegation ids seen, with their expiry (s), in arrival order. Arrival order is nearly expiry order
  // (every lifetime is at most maxTtlSeconds), so each call drops the expired head in O(expired); a
  // full pass runs only when the cache is full.
  const seen = new Map<string, number>();
  const sweepHead = (nowS: number) => {
    for (const [jti, exp] of seen) {
      if (exp >= nowS) return;
      seen.delete(jti);
    }
  };
  const sweepAll = (nowS: number) => {
    for (const [jti, exp] of seen) if (exp < nowS) seen.delete(jti);
  };
  const refuse = (actor: string, err: unknown): never => {
    const refusal =
      err instanceof FederationRefusal
        ? err
        : new FederationRefusal("unauthenticated", "delegation cannot be verified", { cause: err });
    audit.append({
      actor,
      action: "federation.delegation",
      tenant: "",
      resource: "delegation",
      outcome: "denied",
      details: { reason: refusal.reason },
    });
    throw refusal;
  };

  return {
    async issue({ audience, tenant, principal }) {
      const peer = registry.get(audience);
      if (!peer || peer.state !== "established") {
        throw new FederationRefusal("failed-precondition", `${audience} is not an established peer`);
      }
      if (!peer.agreement.outbound.tenants.includes(tenant)) {
        throw new FederationRefusal("permission-denied", `tenant ${tenant} may not cross to ${audience}`);
      }
      const me = deps.identity();
      const iat = Math.floor(clock.now() / 1000);
      const claims: DelegationClaims = {
        iss: me.spiffeId,
        sub: principal,
        aud: audience,
        tenant,
        act: { sub: me.spiffeId },
        iat,
        exp: iat + options.ttlSeconds,
        jti: randomBytes(18).toString("base64url"),
      };
      const token = await signWithSvid(me, DELEGATION_JWS_TYPE, new TextEncoder().encode(JSON.stringify(claims)));
      return { token, expiresAt: claims.exp * 1000 };
    },
    async verify(token, presenter) {
      try {
        const signer = claimedSigner(token);
        if (signer !== presenter) {
          throw new FederationRefusal("permission-denied", "delegation is signed by another kernel than the caller");
        }
        const peer = registry.get(presenter);
        if (!peer || peer.state === "quarantined" || !peer.bundle) {
          throw new FederationRefusal("permission-denied", `${presenter} is not a trusted peer`);
        }
        const { payload } = await verifySvidJws(
          token,
          { spiffeId: peer.spiffeId, bundle: peer.bundle.x509, typ: DELEGATION_JWS_TYPE },
          clock,
        );
        let c: Partial<DelegationClaims>;
        try {
          c = JSON.parse(new TextDecoder().decode(payload)) as Partial<DelegationClaims>;
        } catch {
          throw new FederationRefusal("unauthenticated", "delegation payload is not JSON");
        }
        if (
          typeof c.sub !== "string" ||
          typeof c.tenant !== "string" ||
          typeof c.jti !== "string" ||
          typeof c.iat !== "number" ||
          typeof c.exp !== "number" ||
          c.iss !== presenter ||
          c.act?.sub !== presenter
        ) {
          throw new FederationRefusal("unauthenticated", "delegation claims are incomplete");
        }
        if (c.aud !== deps.identity().spiffeId) {
          throw new FederationRefusal("permission-denied", "delegation is for another audience");
        }
        const nowS = Math.floor(clock.now() / 1000);
        if (c.exp - c.iat > options.maxTtlSeconds) {
          throw new FederationRefusal("unauthenticated", `delegation lives longer than ${options.maxTtlSeconds} s`);
        }
        if (c.exp < nowS) throw new FederationRefusal("unauthenticated", "delegation expired");
        sweepHead(nowS);
        if (seen.has(c.jti)) throw new FederationRefusal("unauthenticated", "delegation was already used (replay)");
        if (seen.size >= options.maxRemembered) sweepAll(nowS);
        if (seen.size >= options.maxRemembered) {
          throw new FederationRefusal(
            "resource-exhausted",
            `replay cache full (${options.maxRemembered} unexpired delegations); retry later`,
          );
        }
        seen.set(c.jti, c.exp);
        if (!peer.agreement.inbound.tenants.includes(c.tenant)) {
          throw new FederationRefusal("permission-denied", `tenant ${c.tenant} is outside the agreement`);
        }
        return { originKernel: presenter, originalPrincipal: c.sub, tenant: c.tenant, expiresAt: c.exp * 1000 };
      } catch (err) {
        return refuse(presenter, err);
      }
    },
  };
}
