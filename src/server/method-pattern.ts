import { ConfigError } from "../common/index.js";

/**
 * Methods that need no credential by default: health checks, reflection, and federation's
 * Discover and Handshake, which authenticate by the SVID signatures they carry (docs/federation.md).
 */
export const DEFAULT_PUBLIC_METHODS: readonly string[] = [
  "/grpc.health.v1.Health/*",
  "/grpc.reflection.v1.ServerReflection/*",
  "/nops.federation.v1.FederationService/Discover",
  "/nops.federation.v1.FederationService/Handshake",
];

const EXACT = /^\/[A-Za-z_][\w.]*\/[A-Za-z_]\w*$/;
const SERVICE_WILDCARD = /^\/[A-Za-z_][\w.]*\/\*$/;

/** Throws ConfigError unless `pattern` is "*", "/pkg.Service/*" or "/pkg.Service/Method". */
export function checkMethodPattern(pattern: string, field: string): void {
  if (pattern !== "*" && !EXACT.test(pattern) && !SERVICE_WILDCARD.test(pattern)) {
    throw new ConfigError(
      `${field} must be "*", "/pkg.Service/*" or "/pkg.Service/Method", got ${JSON.stringify(pattern)}`,
    );
  }
}

/** True when the method path matches the pattern (see checkMethodPattern for the forms). */
export function methodMatches(pattern: string, path: string): boolean {
  if (pattern === "*" || pattern === path) return true;
  return (
    pattern.endsWith("/*") && path.startsWith(pattern.slice(0, -1)) && !path.slice(pattern.length - 1).includes("/")
  );
}

/** Returns a predicate over method paths for a list of patterns, memoised per path. */
export function createMethodMatcher(patterns: readonly string[]): (path: string) => boolean {
  const memo = new Map<string, boolean>();
  return (path) => {
    let hit = memo.get(path);
    if (hit === undefined) {
      hit = patterns.some((p) => methodMatches(p, path));
      // Paths come from service descriptors, so the memo is bounded by the number of methods.
      memo.set(path, hit);
    }
    return hit;
  };
}
