import { ConfigError } from "./errors.js";

/** A plain object read from YAML/JSON/env, before validation. */
export type RawSection = Record<string, unknown>;

/** Returns `input` as an object (absent: empty) without checking its keys: for maps and open sections. */
export function readObject(input: unknown, path: string): RawSection {
  if (input === undefined || input === null) return {};
  if (typeof input !== "object" || Array.isArray(input)) {
    throw new ConfigError(`${path} must be an object`);
  }
  return input as RawSection;
}

/** Returns `input` as an object section, rejecting keys not in `defaults` so typos fail loudly. */
export function readSection(input: unknown, path: string, defaults: object): RawSection {
  const s = readObject(input, path);
  const known = new Set(Object.keys(defaults));
  for (const key of Object.keys(s)) {
    if (!known.has(key)) throw new ConfigError(`${join(path, key)} is not a known option`);
  }
  return s;
}

function join(path: string, key: string): string {
  return path ? `${path}.${key}` : key;
}

function show(v: unknown): string {
  return typeof v === "string" ? JSON.stringify(v) : String(v);
}

/** Open bounds of a numeric range: `{ exclusiveMin: true }` reads as "> min" rather than ">= min". */
export interface RangeBounds {
  exclusiveMin?: boolean;
  exclusiveMax?: boolean;
}

// "from 0 to 10", "in (0, 1]", ">= 1", "> 0", "<= 5"; a bound at `unbounded` is not mentioned.
function describeRange(min: number, max: number, unbounded: number, open: RangeBounds = {}): string {
  const low = min > -unbounded;
  const high = max < unbounded;
  if (low && high) {
    if (!open.exclusiveMin && !open.exclusiveMax) return ` from ${min} to ${max}`;
    return ` in ${open.exclusiveMin ? "(" : "["}${min}, ${max}${open.exclusiveMax ? ")" : "]"}`;
  }
  if (low) return ` ${open.exclusiveMin ? ">" : ">="} ${min}`;
  if (high) return ` ${open.exclusiveMax ? "<" : "<="} ${max}`;
  return "";
}

function inRange(v: number, min: number, max: number, open: RangeBounds = {}): boolean {
  return (open.exclusiveMin ? v > min : v >= min) && (open.exclusiveMax ? v < max : v <= max);
}

/** Reads an integer field within [min, max]. */
export function readInt(
  s: RawSection,
  key: string,
  path: string,
  fallback: number,
  min = 0,
  max = Number.MAX_SAFE_INTEGER,
): number {
  const v = s[key];
  if (v === undefined) return fallback;
  if (typeof v !== "number" || !Number.isInteger(v) || !inRange(v, min, max)) {
    throw new ConfigError(
      `${join(path, key)} must be an integer${describeRange(min, max, Number.MAX_SAFE_INTEGER)} (got ${show(v)})`,
    );
  }
  return v;
}

/** Reads a finite number within [min, max]; `open` makes either bound exclusive. */
export function readNumber(
  s: RawSection,
  key: string,
  path: string,
  fallback: number,
  min = -Infinity,
  max = Infinity,
  open?: RangeBounds,
): number {
  const v = s[key];
  if (v === undefined) return fallback;
  if (typeof v !== "number" || !Number.isFinite(v) || !inRange(v, min, max, open)) {
    throw new ConfigError(
      `${join(path, key)} must be a number${describeRange(min, max, Infinity, open)} (got ${show(v)})`,
    );
  }
  return v;
}

/** Checks a string value must pass. */
export interface StringCheck {
  pattern?: RegExp;
  oneOf?: readonly string[];
  nonEmpty?: boolean;
}

function checkString(v: string, field: string, check?: StringCheck): void {
  if (check?.nonEmpty && v === "") throw new ConfigError(`${field} must not be empty`);
  if (check?.oneOf && !check.oneOf.includes(v)) {
    throw new ConfigError(`${field} must be one of ${check.oneOf.join(", ")} (got ${show(v)})`);
  }
  if (check?.pattern && !check.pattern.test(v)) {
    throw new ConfigError(`${field} must match ${check.pattern} (got ${show(v)})`);
  }
}

/**
 * Reads a string field, optionally constrained to a pattern or a set of values; `nonEmpty` with fallback ""
 * makes it required.
 */
export function readString(s: RawSection, key: string, path: string, fallback: string, check?: StringCheck): string {
  const v = s[key];
  if (v === undefined) {
    if (check?.nonEmpty && fallback === "") throw new ConfigError(`${join(path, key)} is required`);
    return fallback;
  }
  if (typeof v !== "string") throw new ConfigError(`${join(path, key)} must be a string (got ${show(v)})`);
  checkString(v, join(path, key), check);
  return v;
}

/** Reads a string field that has no default: undefined when absent. */
export function readOptionalString(s: RawSection, key: string, path: string, check?: StringCheck): string | undefined {
  return s[key] === undefined ? undefined : readString(s, key, path, "", check);
}

/** Reads a boolean field. */
export function readBool(s: RawSection, key: string, path: string, fallback: boolean): boolean {
  const v = s[key];
  if (v === undefined) return fallback;
  if (typeof v !== "boolean") throw new ConfigError(`${join(path, key)} must be true or false (got ${show(v)})`);
  return v;
}

/** Checks a list of strings must pass: `check` applies to each entry; `single` reads a lone string as a list. */
export interface StringListCheck extends StringCheck {
  minItems?: number;
  single?: boolean;
}

/** Reads a list of strings. */
export function readStringList(
  s: RawSection,
  key: string,
  path: string,
  fallback: readonly string[],
  check?: StringListCheck,
): string[] {
  const v = s[key];
  const field = join(path, key);
  const list: unknown = v === undefined ? [...fallback] : check?.single && typeof v === "string" ? [v] : v;
  if (!Array.isArray(list) || list.some((x) => typeof x !== "string")) {
    throw new ConfigError(`${field} must be a list of strings`);
  }
  if (check?.minItems !== undefined && list.length < check.minItems) {
    throw new ConfigError(
      `${field} must list at least ${check.minItems} ${check.minItems === 1 ? "entry" : "entries"}`,
    );
  }
  if (v !== undefined) (list as string[]).forEach((x, i) => checkString(x, `${field}[${i}]`, check));
  return list as string[];
}

/** Reads a list of strings that has no default: undefined when absent. */
export function readOptionalStringList(
  s: RawSection,
  key: string,
  path: string,
  check?: StringListCheck,
): string[] | undefined {
  return s[key] === undefined ? undefined : readStringList(s, key, path, [], check);
}

/** Policy lists: non-empty strings; a lone string is a one-entry list. */
export const POLICY_LIST = { single: true, nonEmpty: true } as const;
