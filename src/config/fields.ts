import { ConfigError } from "../common/errors.js";

/** A plain object read from YAML/JSON/env, before validation. */
export type RawSection = Record<string, unknown>;

/** Returns `input` as an object section, rejecting keys not in `defaults` so typos fail loudly. */
export function readSection(input: unknown, path: string, defaults: object): RawSection {
  if (input === undefined || input === null) return {};
  if (typeof input !== "object" || Array.isArray(input)) {
    throw new ConfigError(`${path} must be an object`);
  }
  const known = new Set(Object.keys(defaults));
  for (const key of Object.keys(input)) {
    if (!known.has(key)) throw new ConfigError(`${join(path, key)} is not a known option`);
  }
  return input as RawSection;
}

function join(path: string, key: string): string {
  return path ? `${path}.${key}` : key;
}

function show(v: unknown): string {
  return typeof v === "string" ? JSON.stringify(v) : String(v);
}

/** Reads an integer field within [min, max]. */
export function readInt(s: RawSection, key: string, path: string, fallback: number, min = 0, max = Number.MAX_SAFE_INTEGER): number {
  const v = s[key];
  if (v === undefined) return fallback;
  if (typeof v !== "number" || !Number.isInteger(v) || v < min || v > max) {
    throw new ConfigError(`${join(path, key)} must be an integer from ${min} to ${max} (got ${show(v)})`);
  }
  return v;
}

/** Reads a finite number within [min, max]. */
export function readNumber(s: RawSection, key: string, path: string, fallback: number, min = -Infinity, max = Infinity): number {
  const v = s[key];
  if (v === undefined) return fallback;
  if (typeof v !== "number" || !Number.isFinite(v) || v < min || v > max) {
    throw new ConfigError(`${join(path, key)} must be a number from ${min} to ${max} (got ${show(v)})`);
  }
  return v;
}

/** Reads a string field, optionally constrained to a pattern or a set of values. */
export function readString(
  s: RawSection,
  key: string,
  path: string,
  fallback: string,
  check?: { pattern?: RegExp; oneOf?: readonly string[]; nonEmpty?: boolean },
): string {
  const v = s[key];
  if (v === undefined) return fallback;
  if (typeof v !== "string") throw new ConfigError(`${join(path, key)} must be a string (got ${show(v)})`);
  if (check?.nonEmpty && v === "") throw new ConfigError(`${join(path, key)} must not be empty`);
  if (check?.oneOf && !check.oneOf.includes(v)) {
    throw new ConfigError(`${join(path, key)} must be one of ${check.oneOf.join(", ")} (got ${show(v)})`);
  }
  if (check?.pattern && !check.pattern.test(v)) {
    throw new ConfigError(`${join(path, key)} must match ${check.pattern} (got ${show(v)})`);
  }
  return v;
}

/** Reads a boolean field. */
export function readBool(s: RawSection, key: string, path: string, fallback: boolean): boolean {
  const v = s[key];
  if (v === undefined) return fallback;
  if (typeof v !== "boolean") throw new ConfigError(`${join(path, key)} must be true or false (got ${show(v)})`);
  return v;
}

/** Reads a list of strings. */
export function readStringList(s: RawSection, key: string, path: string, fallback: readonly string[]): string[] {
  const v = s[key];
  if (v === undefined) return [...fallback];
  if (!Array.isArray(v) || v.some((x) => typeof x !== "string")) {
    throw new ConfigError(`${join(path, key)} must be a list of strings`);
  }
  return v as string[];
}
