import { Ajv2020, type ErrorObject, type ValidateFunction } from "ajv/dist/2020.js";
import addFormatsModule from "ajv-formats";
import { invalidArgument } from "./rpc-errors.js";

/** Largest JSON Schema a capability may declare, characters. */
export const MAX_SCHEMA_CHARS = 64 * 1024;

/** A compiled JSON Schema: `check` answers undefined when the value conforms, else the first problems. */
export interface CompiledSchema {
  /** The schema as an object (what MCP clients see as inputSchema / outputSchema). */
  readonly schema: Record<string, unknown>;
  check(value: unknown): string | undefined;
}

// ajv-formats is CommonJS: under NodeNext its default import is the module object.
const addFormats = ((addFormatsModule as unknown as { default?: unknown }).default ?? addFormatsModule) as unknown as (
  ajv: Ajv2020,
) => Ajv2020;

// MCP's default dialect is JSON Schema 2020-12 (spec 2025-11-25, "JSON Schema Usage"). Strict schema
// mode rejects unknown keywords, so a typo in a schema is a registration error, not a silently ignored
// constraint. One instance per schema: two agents' schemas may carry the same $id.
const newAjv = () =>
  addFormats(
    new Ajv2020({
      strictSchema: true,
      strictNumbers: true,
      strictTypes: false,
      strictTuples: false,
      strictRequired: false,
      allErrors: false,
      logger: false,
    }),
  );

function describe(errors: readonly ErrorObject[] | null | undefined): string {
  const first = errors?.[0];
  if (!first) return "does not conform to the schema";
  const at = first.instancePath === "" ? "(root)" : first.instancePath;
  return `${at} ${first.message ?? "is invalid"}`;
}

const compiled = new Map<string, CompiledSchema>();

/**
 * Parses and compiles a tool schema (JSON text). MCP requires a tool's input and output schemas
 * to describe an object, so `type` must be "object". Throws INVALID_ARGUMENT naming `field`.
 */
export function compileObjectSchema(field: string, text: string): CompiledSchema {
  const hit = compiled.get(text);
  if (hit) return hit;
  if (text.length > MAX_SCHEMA_CHARS) throw invalidArgument(field, `must be at most ${MAX_SCHEMA_CHARS} characters`);
  let schema: unknown;
  try {
    schema = JSON.parse(text);
  } catch {
    throw invalidArgument(field, "is not JSON");
  }
  if (typeof schema !== "object" || schema === null || Array.isArray(schema))
    throw invalidArgument(field, "must be a JSON Schema object");
  const obj = schema as Record<string, unknown>;
  if (obj.type !== "object")
    throw invalidArgument(field, 'must have "type": "object" (MCP tool schemas describe objects)');
  let validate: ValidateFunction;
  try {
    validate = newAjv().compile(obj);
  } catch (e) {
    throw invalidArgument(field, `is not a valid JSON Schema: ${e instanceof Error ? e.message.slice(0, 200) : "?"}`);
  }
  const out: CompiledSchema = {
    schema: obj,
    check: (value) => (validate(value) ? undefined : describe(validate.errors)),
  };
  if (compiled.size >= 1024) compiled.clear();
  compiled.set(text, out);
  return out;
}
