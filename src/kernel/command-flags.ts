import { ConfigError } from "../common/errors.js";

/** Flags of one `nops-kernel <command>`: `--name value` pairs and bare switches. */
export interface CommandFlags {
  values: Map<string, string>;
  switches: Set<string>;
}

/**
 * Parses `args` of `nops-kernel <command>`: each of `valueFlags` takes the next argument as its value,
 * each of `switchFlags` stands alone; anything else is a ConfigError naming it.
 */
export function parseCommandFlags(
  command: string,
  args: readonly string[],
  valueFlags: ReadonlySet<string>,
  switchFlags: ReadonlySet<string> = new Set(),
): CommandFlags {
  const values = new Map<string, string>();
  const switches = new Set<string>();
  for (let i = 0; i < args.length; i++) {
    const name = args[i]!;
    if (switchFlags.has(name)) {
      switches.add(name);
      continue;
    }
    if (!valueFlags.has(name)) throw new ConfigError(`${command}: unknown argument ${name}`);
    const value = args[++i];
    if (value === undefined || value.startsWith("--")) throw new ConfigError(`${name} needs a value`);
    values.set(name, value);
  }
  return { values, switches };
}

/** The value of a flag `nops-kernel <command>` cannot do without; a ConfigError names it when absent. */
export function requiredFlag(values: ReadonlyMap<string, string>, command: string, name: string): string {
  const v = values.get(name);
  if (v === undefined) throw new ConfigError(`${command} needs ${name}`);
  return v;
}

/** A comma-separated flag value as its non-empty, trimmed items ([] when absent). */
export function commaList(value: string | undefined): string[] {
  return (value ?? "")
    .split(",")
    .map((s) => s.trim())
    .filter((s) => s !== "");
}
