import { createHash } from "node:crypto";
import { RateLimiterMemory } from "rate-limiter-flexible";
import { type AuditLog, createDenialAuditor } from "../audit/index.js";
import {
  type Clock,
  POLICY_LIST,
  readBool,
  readInt,
  readObject,
  readStringList,
  permissionDenied,
  resourceExhausted,
  unauthenticated,
} from "../common/index.js";
import type { Logger } from "../telemetry/index.js";
import { kRequestSigner, type RequestSigner } from "./request-signing/request-signing-interceptor.js";
import {
  DEFAULT_PUBLIC_METHODS,
  checkMethodPattern,
  createMethodMatcher,
  clientIp,
  kPeer,
  methodPath,
  type CallHandler,
  type CallRequest,
  type CallResult,
  type KernelInterceptor,
} from "../server/index.js";
import type { SpiffePrincipalMapper } from "./spiffe-principal-mapper.js";
import { apiKeyIdOf, type ApiKeyStore } from "./api-keys/api-key-store.js";
import { WrongAudienceError, type JwtVerifier } from "./jwt/jwt-verifier.js";
import { kPrincipal, type Principal } from "./principal.js";

/** What the authn interceptor needs; a missing verifier disables that kind of credential. */
export interface AuthnDeps {
  /** Verifies an mTLS peer chain (DER, leaf first); throws when it is not a valid X509-SVID chain. */
  verifyPeer?: (chain: Uint8Array[]) => { spiffeId: string };
  /**
   * Subscribes to changes of the trust bundles: verified chains are forgotten at once, so a trust
   * domain dropped (a federation peer removed) stops authenticating on open connections too.
   */
  onTrustChange?: (listener: () => void) => () => void;
  spiffePrincipals: SpiffePrincipalMapper;
  jwt?: JwtVerifier;
  apiKeys?: Pick<ApiKeyStore, "verify">;
  audit: AuditLog;
  clock: Clock;
  /** Component logger (child "authn"). */
  logger: Logger;
}

/** Authentication settings. */
export interface AuthnOptions {
  /** Methods callable without a credential. @default DEFAULT_PUBLIC_METHODS (health, reflection) */
  publicMethods: string[];
  /** Let calls without any credential through with no principal (plaintext dev ports only). @default false */
  allowAnonymous: boolean;
  /**
   * How long a verified peer chain is remembered, so a connection's calls do not re-verify it;
   * 0 disables. Bounded well below SVID lifetimes (SPIRE default: 1 h). @default 60000
   */
  peerCacheTtlMs: number;
  /** Most peer chains remembered. @default 10000 */
  peerCacheMax: number;
  /**
   * Failed authentications one client address may make per `failureWindowMs`; past it, its
   * credentialed calls are refused RESOURCE_EXHAUSTED with Retry-After before any verification.
   * @default 20
   */
  failuresPerAddress: number;
  /** Failed authentications per API key id (from any address) per window. @default 10 */
  failuresPerCredential: number;
  /** @default 60000 */
  failureWindowMs: number;
}

/** Defaults for AuthnOptions. */
export const DEFAULT_AUTHN_OPTIONS: Readonly<AuthnOptions> = {
  publicMethods: [...DEFAULT_PUBLIC_METHODS],
  allowAnonymous: false,
  peerCacheTtlMs: 60_000,
  peerCacheMax: 10_000,
  failuresPerAddress: 20,
  failuresPerCredential: 10,
  failureWindowMs: 60_000,
};

/** Validates a partial authn config; throws ConfigError naming the field. */
export function resolveAuthnOptions(input: unknown, path = "authn"): AuthnOptions {
  const o = readObject(input, path);
  const d = DEFAULT_AUTHN_OPTIONS;
  const publicMethods = readStringList(o, "publicMethods", path, d.publicMethods, POLICY_LIST);
  publicMethods.forEach((m, i) => checkMethodPattern(m, `${path}.publicMethods[${i}]`));
  return {
    publicMethods,
    allowAnonymous: readBool(o, "allowAnonymous", path, d.allowAnonymous),
    peerCacheTtlMs: readInt(o, "peerCacheTtlMs", path, d.peerCacheTtlMs, 0),
    peerCacheMax: readInt(o, "peerCacheMax", path, d.peerCacheMax, 1),
    failuresPerAddress: readInt(o, "failuresPerAddress", path, d.failuresPerAddress, 1),
    failuresPerCredential: readInt(o, "failuresPerCredential", path, d.failuresPerCredential, 1),
    failureWindowMs: readInt(o, "failureWindowMs", path, d.failureWindowMs, 1000),
  };
}

// Clients learn that they were refused, never why (the audit trail says why).
const REFUSED = "unauthenticated";
const BEARER = /^bearer +(\S+)$/i;

type Credential =
  | { kind: "mtls" }
  | { kind: "jwt"; token: string }
  | { kind: "apikey"; key: string }
  | { kind: "signed"; signer: RequestSigner }
  | { kind: "none" };

const NO_CREDENTIAL: Credential = Object.freeze({ kind: "none" });
const MTLS_CREDENTIAL: Credential = Object.freeze({ kind: "mtls" });

function credentialOf(call: CallRequest): Credential {
  if (call.ctx.values.get(kPeer).certificates.length > 0) return MTLS_CREDENTIAL;
  const authorization = call.ctx.requestHeader.get("authorization");
  if (authorization !== null) {
    const m = BEARER.exec(authorization.trim());
    return m?.[1] ? { kind: "jwt", token: m[1] } : { kind: "jwt", token: "" };
  }
  const key = call.ctx.requestHeader.get("x-api-key");
  if (key !== null) return { kind: "apikey", key: key.trim() };
  // Verified earlier in the chain by the request-signing interceptor (agents off the mesh).
  const signer = call.ctx.values.get(kRequestSigner);
  if (signer) return { kind: "signed", signer };
  return NO_CREDENTIAL;
}

/**
 * Creates the authentication link of the chain. The principal comes from, in order, the mTLS
 * peer chain, `authorization: Bearer <jwt>`, then `x-api-key`; the first credential present
 * decides, and a bad one is refused rather than skipped. The principal is put in kPrincipal.
 * Refusals are UNAUTHENTICATED and audited as "authn.deny".
 */
export function createAuthnInterceptor(deps: AuthnDeps, options: AuthnOptions): KernelInterceptor {
  const denials = createDenialAuditor(deps);
  const isPublic = createMethodMatcher(options.publicMethods);
  const peerCache = new Map<string, { principal: Principal; expiresAt: number }>();
  deps.onTrustChange?.(() => peerCache.clear());

  function fromPeer(chain: Uint8Array[]): Principal {
    if (!deps.verifyPeer) throw new Error("mTLS peer verification is not configured");
    if (options.peerCacheTtlMs === 0) return deps.spiffePrincipals.map(deps.verifyPeer(chain).spiffeId);
    const h = createHash("sha256");
    for (const der of chain) h.update(der);
    const key = h.digest("base64");
    const now = deps.clock.now();
    const hit = peerCache.get(key);
    if (hit && hit.expiresAt > now) return hit.principal;
    const principal = deps.spiffePrincipals.map(deps.verifyPeer(chain).spiffeId);
    if (peerCache.size >= options.peerCacheMax) peerCache.clear();
    peerCache.set(key, { principal, expiresAt: now + options.peerCacheTtlMs });
    return principal;
  }

  async function authenticate(call: CallRequest, credential: Credential): Promise<Principal> {
    switch (credential.kind) {
      case "mtls":
        return fromPeer(call.ctx.values.get(kPeer).certificates);
      case "jwt":
        if (!deps.jwt) throw new Error("bearer tokens are not accepted");
        if (credential.token === "") throw new Error("authorization header is not 'Bearer <token>'");
        return deps.jwt.verify(credential.token);
      case "apikey":
        if (!deps.apiKeys) throw new Error("api keys are not accepted");
        return deps.apiKeys.verify(credential.key);
      case "signed":
        if (!credential.signer.tenant) throw new Error(`signing key ${credential.signer.keyId} is bound to no tenant`);
        return {
          kind: "signed",
          id: `signed:${credential.signer.keyId}`,
          tenant: credential.signer.tenant,
          roles: ["OPERATOR"],
          scopes: [],
          capabilities: [],
        };
      case "none":
        throw new Error("no credential");
    }
  }

  // Failed authentications per client address and per API key id. A caller over either budget is
  // refused before verification, so a flood of guesses costs neither hashing nor audit rows.
  const failures = {
    address: new RateLimiterMemory({ points: options.failuresPerAddress, duration: options.failureWindowMs / 1000 }),
    credential: new RateLimiterMemory({
      points: options.failuresPerCredential,
      duration: options.failureWindowMs / 1000,
    }),
  };
  const keysOf = (call: CallRequest, credential: Credential) => {
    const keyId = credential.kind === "apikey" ? apiKeyIdOf(credential.key) : undefined;
    return { address: clientIp(call.ctx.values.get(kPeer).address), keyId };
  };
  const overBudget = async (limiter: RateLimiterMemory, key: string, points: number): Promise<number> => {
    const state = await limiter.get(key);
    return state && state.consumedPoints >= points ? state.msBeforeNext : 0;
  };
  const throttled = (call: CallRequest, credential: Credential, waitMs: number) => {
    denials(call, {
      actor: "anonymous",
      action: "authn.deny",
      tenant: "",
      reason: "too many failed authentications",
      credential: credential.kind,
    });
    const error = resourceExhausted("too many failed authentications", waitMs);
    call.ctx.responseHeader.set("retry-after", error.metadata.get("retry-after") ?? "1");
    return error;
  };

  async function authenticated(next: CallHandler, call: CallRequest, credential: Credential): Promise<CallResult> {
    const keys = keysOf(call, credential);
    // An address over its budget is refused before any verification: a flood costs nothing.
    const addressWait = await overBudget(failures.address, keys.address, options.failuresPerAddress);
    if (addressWait > 0) throw throttled(call, credential, addressWait);
    let principal: Principal;
    try {
      principal = await authenticate(call, credential);
    } catch (e) {
      await failures.address.consume(keys.address).catch(() => undefined);
      // A key id under attack answers its failures 429: the holder of the real secret still gets
      // in (it verifies first), the guesser is told to stop.
      if (keys.keyId) {
        await failures.credential.consume(keys.keyId).catch(() => undefined);
        const keyWait = await overBudget(failures.credential, keys.keyId, options.failuresPerCredential);
        if (keyWait > 0) throw throttled(call, credential, keyWait);
      }
      denials(call, {
        actor: "anonymous",
        action: "authn.deny",
        tenant: "",
        reason: e instanceof Error ? e.message : String(e),
        credential: credential.kind,
      });
      // A genuine token for another audience identifies its bearer: refused as not allowed here.
      if (e instanceof WrongAudienceError) throw permissionDenied("credential not valid for this service");
      throw unauthenticated(REFUSED);
    }
    call.ctx.values.set(kPrincipal, principal);
    return next(call);
  }

  // Public methods and anonymous callers where allowed pass without a promise of their own.
  return (next) => (call) => {
    if (isPublic(methodPath(call.method))) return next(call);
    const credential = credentialOf(call);
    return credential.kind === "none" && options.allowAnonymous ? next(call) : authenticated(next, call, credential);
  };
}
