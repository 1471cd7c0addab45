import { decodeJwt } from "jose";
import { ConfigError, readObject, readOptionalStringList, readString, POLICY_LIST } from "../common/index.js";
import type { JwtVerifier } from "./jwt/jwt-verifier.js";
import { INVOKE_GRANT_PROBLEM, invokeGrantCovers, isInvokeGrant } from "./invoke-grant.js";

/** Where a JWT's invoke grants come from (read from the `identity.jwt` section). */
export interface JwtInvokeOptions {
  /** Claim carrying the invoke grants (array or space-separated). @default "invoke" */
  invokeClaim: string;
  /**
   * Invoke grants a token's claim may hold, by issuer; grants beyond them are dropped, so a token
   * never invokes more than the operator allowed its issuer. An issuer not listed may grant any
   * ("*"). @default {}
   */
  issuerInvoke: Record<string, string[]>;
}

/** Reads `invokeClaim` and `issuerInvoke` of the JWT section; throws ConfigError naming the field. */
export function resolveJwtInvokeOptions(
  input: unknown,
  issuers: readonly string[],
  path = "identity.jwt",
): JwtInvokeOptions {
  const o = readObject(input, path);
  const out: JwtInvokeOptions = {
    invokeClaim: readString(o, "invokeClaim", path, "invoke", { nonEmpty: true }),
    issuerInvoke: {},
  };
  const byIssuer = readObject(o.issuerInvoke ?? {}, `${path}.issuerInvoke`);
  for (const issuer of Object.keys(byIssuer)) {
    if (!issuers.includes(issuer)) throw new ConfigError(`${path}.issuerInvoke.${issuer}: not one of ${path}.issuer`);
    const grants = readOptionalStringList(byIssuer, issuer, `${path}.issuerInvoke`, POLICY_LIST) ?? [];
    grants.forEach((g, i) => {
      if (!isInvokeGrant(g))
        throw new ConfigError(`${path}.issuerInvoke.${issuer}[${i}] ${INVOKE_GRANT_PROBLEM}: ${JSON.stringify(g)}`);
    });
    out.issuerInvoke[issuer] = grants;
  }
  return out;
}

function grantList(value: unknown): string[] {
  if (typeof value === "string") return value.split(" ").filter((s) => s.length > 0);
  if (Array.isArray(value)) return value.filter((s): s is string => typeof s === "string" && s.length > 0);
  return [];
}

/**
 * Adds invoke grants to the principals of a JWT verifier: the token's `invokeClaim`, minus
 * malformed grants and grants its issuer may not hand out. The claims are read only after the
 * verifier accepted the token's signature and claims.
 */
export function withJwtInvokeGrants(verifier: JwtVerifier, options: JwtInvokeOptions): JwtVerifier {
  return {
    async verify(token) {
      const principal = await verifier.verify(token);
      const payload = decodeJwt(token);
      const allowed = options.issuerInvoke[payload.iss ?? ""] ?? ["*"];
      const invoke = grantList(payload[options.invokeClaim]).filter(
        (g) => isInvokeGrant(g) && allowed.some((a) => invokeGrantCovers(a, g)),
      );
      return { ...principal, invoke };
    },
  };
}
