import {
  createLocalJWKSet,
  createRemoteJWKSet,
  customFetch,
  errors,
  jwtVerify,
  type FetchImplementation,
  type JSONWebKeySet,
  type JWTPayload,
  type JWTVerifyGetKey,
} from "jose";
import {
  type Clock,
  ConfigError,
  readInt,
  readObject,
  readOptionalString,
  readString,
  readStringList,
  TENANT_PATTERN,
} from "../../common/index.js";
import type { Logger } from "../../telemetry/index.js";
import { CredentialError, ROLES, isRole, readRoles, type Principal, type Role } from "../principal.js";

/** Signature algorithms the kernel accepts, if pinned in config. */
export type JwtAlgorithm = "HS256" | "RS256" | "ES256";
const SUPPORTED: readonly JwtAlgorithm[] = ["HS256", "RS256", "ES256"];

/** JWT verification settings. */
export interface JwtVerifierOptions {
  /** Accepted `iss` values. Required. */
  issuer: string[];
  /** Accepted `aud` values; the token must name one. Required. */
  audience: string[];
  /** Pinned algorithms; anything else (including "none") is rejected. @default ["RS256", "ES256"] */
  algorithms: JwtAlgorithm[];
  /** JWKS endpoint for RS256/ES256 (https, or http on loopback only). */
  jwksUrl?: string;
  /** Static JWKS for RS256/ES256, instead of jwksUrl. */
  jwks?: JSONWebKeySet;
  /** HS256 shared secret, at least 32 bytes (RFC 7518 §3.2). */
  hmacSecret?: Uint8Array;
  /** Allowed clock skew for exp/nbf/iat. @default DEFAULT_JWT_CLOCK_TOLERANCE_SEC (30) */
  clockToleranceSec: number;
  /** How long a fetched JWKS is used before it is fetched again. @default 600000 */
  jwksCacheMaxAgeMs: number;
  /** Minimum time between fetches triggered by an unknown `kid`. @default 30000 */
  jwksCooldownMs: number;
  /** Timeout of one JWKS fetch. @default 5000 */
  jwksTimeoutMs: number;
  /** Claim carrying roles (array or space-separated). @default "roles" */
  rolesClaim: string;
  /** Claim carrying the tenant; absent means no tenant (all tenants only for SUPER_ADMIN). @default "tenant" */
  tenantClaim: string;
  /** Claim carrying capabilities (array). @default "capabilities" */
  capabilitiesClaim: string;
  /** Longest accepted lifetime, `exp` minus `iat` (or minus now without `iat`), seconds. @default 86400 */
  maxLifetimeSec: number;
  /**
   * Roles a token's roles claim may grant, by issuer; roles beyond them are ignored, so a token can
   * never raise its bearer past what the operator allowed that issuer. An issuer not listed may
   * grant every role but SUPER_ADMIN. @default {}
   */
  issuerRoles: Record<string, Role[]>;
}

/** A genuine token minted for another service: the caller is known but not allowed here (403, not 401). */
export class WrongAudienceError extends CredentialError {
  override name = "WrongAudienceError";
}

/** Default clock tolerance, seconds. */
export const DEFAULT_JWT_CLOCK_TOLERANCE_SEC = 30;
/** Defaults for the optional JwtVerifierOptions fields. */
export const DEFAULT_JWT_VERIFIER_OPTIONS = {
  algorithms: ["RS256", "ES256"] as JwtAlgorithm[],
  clockToleranceSec: DEFAULT_JWT_CLOCK_TOLERANCE_SEC,
  jwksCacheMaxAgeMs: 600_000,
  jwksCooldownMs: 30_000,
  jwksTimeoutMs: 5_000,
  rolesClaim: "roles",
  tenantClaim: "tenant",
  capabilitiesClaim: "capabilities",
  maxLifetimeSec: 86_400,
} as const;

const ISSUER_DEFAULT_ROLES: readonly Role[] = ROLES.filter((r) => r !== "SUPER_ADMIN");

// Issuers, audiences and algorithms: a lone string is a one-entry list.
const REQUIRED_LIST = { single: true, nonEmpty: true, minItems: 1 } as const;

/** Validates JWT settings (hmacSecret as a string of >= 32 bytes); throws ConfigError naming the field. */
export function resolveJwtVerifierOptions(input: unknown, path = "identity.jwt"): JwtVerifierOptions {
  const o = readObject(input, path);
  const d = DEFAULT_JWT_VERIFIER_OPTIONS;
  const out: JwtVerifierOptions = {
    issuer: readStringList(o, "issuer", path, [], REQUIRED_LIST),
    audience: readStringList(o, "audience", path, [], REQUIRED_LIST),
    algorithms: readStringList(o, "algorithms", path, d.algorithms, {
      ...REQUIRED_LIST,
      oneOf: SUPPORTED,
    }) as JwtAlgorithm[],
    clockToleranceSec: readInt(o, "clockToleranceSec", path, d.clockToleranceSec),
    jwksCacheMaxAgeMs: readInt(o, "jwksCacheMaxAgeMs", path, d.jwksCacheMaxAgeMs),
    jwksCooldownMs: readInt(o, "jwksCooldownMs", path, d.jwksCooldownMs),
    jwksTimeoutMs: readInt(o, "jwksTimeoutMs", path, d.jwksTimeoutMs),
    rolesClaim: readString(o, "rolesClaim", path, d.rolesClaim, { nonEmpty: true }),
    tenantClaim: readString(o, "tenantClaim", path, d.tenantClaim, { nonEmpty: true }),
    capabilitiesClaim: readString(o, "capabilitiesClaim", path, d.capabilitiesClaim, { nonEmpty: true }),
    maxLifetimeSec: readInt(o, "maxLifetimeSec", path, d.maxLifetimeSec, 1),
    issuerRoles: {},
  };
  const issuerRoles = readObject(o.issuerRoles ?? {}, `${path}.issuerRoles`);
  for (const issuer of Object.keys(issuerRoles)) {
    if (!out.issuer.includes(issuer)) throw new ConfigError(`${path}.issuerRoles.${issuer}: not one of ${path}.issuer`);
    out.issuerRoles[issuer] = readRoles(issuerRoles, issuer, `${path}.issuerRoles`) ?? [];
  }
  if (o.jwksUrl !== undefined && o.jwks !== undefined) throw new ConfigError(`${path}: set jwksUrl or jwks, not both`);
  const jwksUrl = readOptionalString(o, "jwksUrl", path);
  if (jwksUrl !== undefined) {
    let url: URL;
    try {
      url = new URL(jwksUrl);
    } catch {
      throw new ConfigError(`${path}.jwksUrl is not a URL`);
    }
    const loopback = ["127.0.0.1", "localhost", "[::1]"].includes(url.hostname);
    if (url.protocol !== "https:" && !(url.protocol === "http:" && loopback)) {
      throw new ConfigError(`${path}.jwksUrl must be https (plain http only on loopback)`);
    }
    out.jwksUrl = url.href;
  }
  if (o.jwks !== undefined) {
    const keys = typeof o.jwks === "object" && o.jwks !== null ? (o.jwks as Record<string, unknown>).keys : undefined;
    if (!Array.isArray(keys) || keys.length === 0)
      throw new ConfigError(`${path}.jwks must be a JWKS object with a non-empty "keys" list`);
    out.jwks = o.jwks as JSONWebKeySet;
  }
  if (o.hmacSecret !== undefined) {
    if (typeof o.hmacSecret !== "string" && !(o.hmacSecret instanceof Uint8Array))
      throw new ConfigError(`${path}.hmacSecret must be a string`);
    const secret =
      typeof o.hmacSecret === "string" ? new TextEncoder().encode(o.hmacSecret) : Uint8Array.from(o.hmacSecret);
    if (secret.length < 32) throw new ConfigError(`${path}.hmacSecret must be at least 32 bytes`);
    out.hmacSecret = secret;
  }
  if (out.algorithms.includes("HS256") && !out.hmacSecret)
    throw new ConfigError(`${path}.hmacSecret is required when algorithms include HS256`);
  if (out.algorithms.some((a) => a !== "HS256") && !out.jwksUrl && !out.jwks) {
    throw new ConfigError(`${path}.jwksUrl or ${path}.jwks is required when algorithms include RS256 or ES256`);
  }
  return out;
}

/** What the verifier needs. */
export interface JwtVerifierDeps {
  clock: Clock;
  /** Component logger (child "jwt"). */
  logger: Logger;
  /** Fetch used for the JWKS; the lead passes the Egress Guard's. @default global fetch */
  fetch?: FetchImplementation;
}

/** Verifies bearer tokens. */
export interface JwtVerifier {
  /** The principal for a valid token; throws CredentialError otherwise. */
  verify(token: string): Promise<Principal>;
}

function stringList(value: unknown): string[] {
  if (typeof value === "string") return value.split(" ").filter((s) => s.length > 0);
  if (Array.isArray(value)) return value.filter((s): s is string => typeof s === "string" && s.length > 0);
  return [];
}

/**
 * Creates the verifier: signature with a pinned algorithm, then iss, aud, exp and nbf (with
 * clock tolerance, against the injected Clock). Scopes come from `scope` (RFC 8693 §4.2,
 * space-separated) or `scp`; roles, tenant and capabilities from configurable claims.
 */
export function createJwtVerifier(deps: JwtVerifierDeps, options: JwtVerifierOptions): JwtVerifier {
  const remote = options.jwksUrl
    ? createRemoteJWKSet(new URL(options.jwksUrl), {
        cacheMaxAge: options.jwksCacheMaxAgeMs,
        cooldownDuration: options.jwksCooldownMs,
        timeoutDuration: options.jwksTimeoutMs,
        ...(deps.fetch ? { [customFetch]: deps.fetch } : {}),
      })
    : undefined;
  const local = options.jwks ? createLocalJWKSet(options.jwks) : undefined;
  const asymmetric = remote ?? local;
  const secret = options.hmacSecret;
  // The key is chosen by the (already pinned) header alg, so an RSA public key can never be
  // used as an HMAC secret (the classic alg-confusion attack).
  const getKey: JWTVerifyGetKey = async (header, token) => {
    if (header.alg === "HS256") {
      if (!secret) throw new CredentialError("no HS256 secret configured");
      return secret;
    }
    if (!asymmetric) throw new CredentialError("no JWKS configured");
    return asymmetric(header, token);
  };

  function principalOf(payload: JWTPayload): Principal {
    if (typeof payload.sub !== "string" || payload.sub.length === 0) throw new CredentialError("token has no sub");
    const tenant = payload[options.tenantClaim];
    if (tenant !== undefined && (typeof tenant !== "string" || !TENANT_PATTERN.test(tenant)))
      throw new CredentialError("token tenant is not a tenant id");
    const allowed = options.issuerRoles[payload.iss ?? ""] ?? ISSUER_DEFAULT_ROLES;
    const roles = stringList(payload[options.rolesClaim]).filter((r): r is Role => isRole(r) && allowed.includes(r));
    const scopes = payload.scope !== undefined ? stringList(payload.scope) : stringList(payload.scp);
    return {
      kind: "jwt",
      id: `jwt:${payload.sub}`,
      tenant,
      roles,
      scopes,
      capabilities: stringList(payload[options.capabilitiesClaim]),
    };
  }

  return {
    async verify(token) {
      try {
        const { payload } = await jwtVerify(token, getKey, {
          algorithms: options.algorithms,
          issuer: options.issuer,
          audience: options.audience,
          clockTolerance: options.clockToleranceSec,
          currentDate: new Date(deps.clock.now()),
          requiredClaims: ["exp", "sub"],
        });
        // jose checks exp and nbf but neither an iat in the future nor how long a token lives.
        const now = deps.clock.now() / 1000;
        if (payload.iat !== undefined && payload.iat > now + options.clockToleranceSec)
          throw new CredentialError("jwt rejected: iat is in the future");
        if (payload.exp! - (payload.iat ?? now) > options.maxLifetimeSec + options.clockToleranceSec)
          throw new CredentialError(`jwt rejected: lifetime over ${options.maxLifetimeSec} s`);
        return principalOf(payload);
      } catch (e) {
        if (e instanceof CredentialError) throw e;
        if (e instanceof errors.JWTClaimValidationFailed && e.claim === "aud")
          throw new WrongAudienceError("jwt rejected: audience is not this service", { cause: e });
        if (e instanceof errors.JOSEError) throw new CredentialError(`jwt rejected: ${e.code}`, { cause: e });
        deps.logger.error({ err: e }, "jwt verification failed unexpectedly");
        throw new CredentialError("jwt rejected", { cause: e });
      }
    },
  };
}
