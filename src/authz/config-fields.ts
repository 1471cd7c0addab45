import { ConfigError } from "../common/errors.js";

// Small readers for partial plain-object config (YAML/JSON/env): each names the field it rejects.

/** Returns `input` as a record, or throws naming `path`. */
export function asRecord(input: unknown, path: string): Record<string, unknown> {
  if (input === undefined || input === null) return {};
  if (typeof input !== "object" || Array.isArray(input)) throw new ConfigError(`${path} must be an object`);
  return input as Record<string, unknown>;
}

/** Reads an optional string. */
export function readString(obj: Record<string, unknown>, key: string, path: string): string | undefined {
  const v = obj[key];
  if (v === undefined) return undefined;
  if (typeof v !== "string" || v.length === 0) throw new ConfigError(`${path}.${key} must be a non-empty string`);
  return v;
}

/** Reads an optional array of non-empty strings (a single string is taken as a one-element list). */
export function readStringList(obj: Record<string, unknown>, key: string, path: string): string[] | undefined {
  const v = obj[key];
  if (v === undefined) return undefined;
  const list: unknown[] = typeof v === "string" ? [v] : Array.isArray(v) ? v : [0];
  if (!list.every((x) => typeof x === "string" && x.length > 0)) {
    throw new ConfigError(`${path}.${key} must be a list of non-empty strings`);
  }
  return list as string[];
}

/** Reads an optional boolean. */
export function readBoolean(obj: Record<string, unknown>, key: string, path: string): boolean | undefined {
  const v = obj[key];
  if (v === undefined) return undefined;
  if (typeof v !== "boolean") throw new ConfigError(`${path}.${key} must be a boolean`);
  return v;
}

/** Reads an optional integer >= `min`. */
export function readInteger(obj: Record<string, unknown>, key: string, path: string, min: number): number | undefined {
  const v = obj[key];
  if (v === undefined) return undefined;
  if (typeof v !== "number" || !Number.isInteger(v) || v < min) {
    throw new ConfigError(`${path}.${key} must be an integer >= ${min}`);
  }
  return v;
}
