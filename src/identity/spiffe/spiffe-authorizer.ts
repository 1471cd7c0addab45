import { parseSpiffeId, parseTrustDomain, type SpiffeId } from "./spiffe-id.js";
import { ConfigError } from "../../common/index.js";

/** Decides whether a (parsed, valid) SPIFFE id is accepted. */
export type SpiffeAuthorizer = (id: SpiffeId) => boolean;

/** Accepts exactly one SPIFFE id. */
export function authorizeId(expected: string): SpiffeAuthorizer {
  const want = parseSpiffeId(expected).id;
  return (id) => id.id === want;
}

/** Accepts any of the listed SPIFFE ids. */
export function authorizeOneOf(expected: readonly string[]): SpiffeAuthorizer {
  const set = new Set(expected.map((e) => parseSpiffeId(e).id));
  return (id) => set.has(id.id);
}

/** Accepts every id of a trust domain. */
export function authorizeMemberOf(trustDomain: string): SpiffeAuthorizer {
  const td = parseTrustDomain(trustDomain);
  return (id) => id.trustDomain === td;
}

/**
 * Accepts ids of `trustDomain` whose path is `prefix` or lies below it, segment-wise:
 * "/nops/admin" accepts "/nops/admin" and "/nops/admin/x" but not "/nops/administrator".
 */
export function authorizePathPrefix(trustDomain: string, prefix: string): SpiffeAuthorizer {
  const td = parseTrustDomain(trustDomain);
  if (!prefix.startsWith("/")) throw new ConfigError(`path prefix must start with "/": ${JSON.stringify(prefix)}`);
  const base = prefix.replace(/\/+$/, "");
  const below = `${base}/`;
  return (id) => id.trustDomain === td && (id.path === base || id.path.startsWith(below));
}

/** A rule's match: every given field must hold (AND). */
export interface SpiffeMatch {
  /** Exactly this id. */
  id?: string;
  /** One of these ids. */
  oneOf?: string[];
  /** Member of this trust domain. @default the local trust domain, unless `id` or `oneOf` is set */
  trustDomain?: string;
  /** Path equal to or below this prefix, segment-wise (see authorizePathPrefix). */
  pathPrefix?: string;
}

/**
 * Builds one authorizer from a match. The trust domain defaults to the local one so that a
 * path-prefix rule never admits a federated domain's ids by accident.
 */
export function createSpiffeMatcher(match: SpiffeMatch, localTrustDomain: string, field: string): SpiffeAuthorizer {
  const parts: SpiffeAuthorizer[] = [];
  try {
    if (match.id !== undefined) parts.push(authorizeId(match.id));
    if (match.oneOf !== undefined) {
      if (match.oneOf.length === 0) throw new ConfigError("oneOf must not be empty");
      parts.push(authorizeOneOf(match.oneOf));
    }
    const td =
      match.trustDomain ?? (match.id === undefined && match.oneOf === undefined ? localTrustDomain : undefined);
    if (match.pathPrefix !== undefined) parts.push(authorizePathPrefix(td ?? localTrustDomain, match.pathPrefix));
    else if (td !== undefined) parts.push(authorizeMemberOf(td));
  } catch (e) {
    throw new ConfigError(`${field} is invalid: ${e instanceof Error ? e.message : String(e)}`, { cause: e });
  }
  return (id) => parts.every((p) => p(id));
}
