import type { DestinationStream } from "pino";

/** One value pattern scrubbed from every log line, and what replaces it. */
export interface ScrubRule {
  pattern: RegExp;
  replacement: string;
}

/**
 * Values that must never reach a log line wherever they appear (a field the path redaction does
 * not name, an error message echoing input): kernel API keys (nops_<keyId>_<secret>, see
 * src/identity/api-keys/api-key-store.ts; the key id stays for correlation), bearer tokens,
 * JWTs (RFC 7519 compact form) and e-mail addresses.
 */
export const DEFAULT_SCRUB_RULES: readonly ScrubRule[] = [
  { pattern: /\b(nops_[0-9a-f]{24}_)[A-Za-z0-9_-]{43}/g, replacement: "$1[redacted]" },
  { pattern: /\b(Bearer\s+)[A-Za-z0-9._~+/-]+=*/gi, replacement: "$1[redacted]" },
  { pattern: /\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*/g, replacement: "[redacted-jwt]" },
  { pattern: /[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}/g, replacement: "[redacted-email]" },
];

/** Applies the rules to one serialized log line. */
export function scrubLine(line: string, rules: readonly ScrubRule[] = DEFAULT_SCRUB_RULES): string {
  let out = line;
  for (const r of rules) out = out.replace(r.pattern, r.replacement);
  return out;
}

/** Turns configured regex sources (telemetry.redactPatterns) into rules replacing with "[redacted]". */
export function scrubRulesFrom(patterns: readonly string[]): ScrubRule[] {
  return [...DEFAULT_SCRUB_RULES, ...patterns.map((p) => ({ pattern: new RegExp(p, "g"), replacement: "[redacted]" }))];
}

/**
 * A pino destination that scrubs secret and PII values from each line before it is written: the
 * second line of defence behind pino's path redaction (LoggerConfig.redactPaths), which only
 * removes fields it is told the names of.
 */
export function createRedactingDestination(
  destination: DestinationStream,
  rules: readonly ScrubRule[] = DEFAULT_SCRUB_RULES,
): DestinationStream {
  return { write: (msg: string) => destination.write(scrubLine(msg, rules)) };
}
