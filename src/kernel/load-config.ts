import { readFileSync } from "node:fs";
import { parse as parseYaml } from "yaml";
import { ConfigError } from "../common/errors.js";

/** One environment variable the kernel reads, derived from the defaults tree. */
export interface EnvBinding {
  /** e.g. "NOPS_GRPC_PORT" */
  name: string;
  /** e.g. ["grpc", "port"] */
  path: string[];
  /** The default value, which also fixes how the variable is parsed. */
  defaultValue: unknown;
}

const upperSnake = (key: string): string => key.replace(/([a-z0-9])([A-Z])/g, "$1_$2").toUpperCase();

/** Lists `NOPS_<PATH>` variables for every leaf of `defaults` (arrays are comma-separated). */
export function envBindings(defaults: object, prefix: string[] = []): EnvBinding[] {
  const out: EnvBinding[] = [];
  for (const [key, value] of Object.entries(defaults)) {
    const path = [...prefix, key];
    if (value !== null && typeof value === "object" && !Array.isArray(value)) {
      out.push(...envBindings(value as object, path));
    } else {
      out.push({ name: `NOPS_${path.map(upperSnake).join("_")}`, path, defaultValue: value });
    }
  }
  return out;
}

function parseEnvValue(binding: EnvBinding, text: string): unknown {
  const d = binding.defaultValue;
  if (typeof d === "number") {
    const n = Number(text);
    if (text.trim() === "" || !Number.isFinite(n))
      throw new ConfigError(`${binding.name} must be a number (got "${text}")`);
    return n;
  }
  if (typeof d === "boolean") {
    if (/^(true|1|yes)$/i.test(text)) return true;
    if (/^(false|0|no)$/i.test(text)) return false;
    throw new ConfigError(`${binding.name} must be true or false (got "${text}")`);
  }
  if (Array.isArray(d)) return text === "" ? [] : text.split(",").map((x) => x.trim());
  return text;
}

function setPath(target: Record<string, unknown>, path: string[], value: unknown): void {
  let node = target;
  for (const key of path.slice(0, -1)) {
    const next = node[key];
    if (next === undefined || next === null) node = node[key] = {};
    else if (typeof next === "object" && !Array.isArray(next)) node = next as Record<string, unknown>;
    else throw new ConfigError(`${path.join(".")}: the config file has a non-object at ${key}`);
  }
  node[path.at(-1) as string] = value;
}

/** Reads a YAML or JSON config file (YAML is a superset of JSON) into a raw object. */
export function readConfigFile(file: string): Record<string, unknown> {
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (e) {
    throw new ConfigError(`cannot read config file ${file}: ${(e as Error).message}`, { cause: e });
  }
  let parsed: unknown;
  try {
    parsed = parseYaml(text);
  } catch (e) {
    throw new ConfigError(`config file ${file} is not valid YAML or JSON: ${(e as Error).message}`, { cause: e });
  }
  if (parsed === null || parsed === undefined) return {};
  if (typeof parsed !== "object" || Array.isArray(parsed))
    throw new ConfigError(`config file ${file} must hold an object`);
  return parsed as Record<string, unknown>;
}

/**
 * Merges the config file (if any) with `NOPS_*` environment variables (env wins). The result is
 * raw: pass it to the options resolver, which validates it and fills defaults.
 */
export function loadRawConfig(input: {
  file?: string;
  env: Record<string, string | undefined>;
  defaults: object;
}): Record<string, unknown> {
  const raw = input.file ? readConfigFile(input.file) : {};
  for (const binding of envBindings(input.defaults)) {
    const text = input.env[binding.name];
    if (text !== undefined) setPath(raw, binding.path, parseEnvValue(binding, text));
  }
  return raw;
}
