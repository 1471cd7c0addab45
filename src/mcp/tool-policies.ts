import { CelScalar, celEnv, isCelError, mapType, parse, plan, type CelInput } from "@bufbuild/cel";
import { strings } from "@bufbuild/cel/ext";
import { ConfigError, readObject, readString } from "../common/index.js";
import type { Principal } from "../identity/index.js";

/** One call-time argument policy (config `mcp.policies[]`). */
export interface ToolPolicyOptions {
  /** Name for the audit trail and the CLI. */
  name: string;
  /** Tool name it applies to; "*" for every tool, or a prefix ending in "*" ("crm.*"). */
  tool: string;
  /** CEL expression over `principal`, `tool` and `args` that must be true for the call to go ahead. */
  allow: string;
  /** What the caller is told when the expression is false. @default "denied by policy <name>" */
  reason: string;
}

/** A call-time decision: the policy that denied and why. */
export type ToolPolicyDecision =
  | { readonly allowed: true }
  | {
      readonly allowed: false;
      readonly policy: string;
      readonly reason: string;
      /** "false", or the evaluation error (names fields and types, never values); for audit and the CLI. */
      readonly detail: string;
    };

/** The compiled policies. */
export interface ToolPolicies {
  /** Evaluates every policy that applies to `tool`; all must allow. Errors deny (fail closed). */
  decide(principal: Principal, tool: string, args: Record<string, unknown>): ToolPolicyDecision;
  readonly size: number;
}

const VARIABLES = new Set(["principal", "tool", "args"]);
const TOOL_PATTERN = /^(\*|[A-Za-z0-9][A-Za-z0-9._-]{0,127}\*?)$/;

const env = celEnv({
  variables: {
    principal: mapType(CelScalar.STRING, CelScalar.DYN),
    tool: CelScalar.STRING,
    args: mapType(CelScalar.STRING, CelScalar.DYN),
  },
  funcs: strings,
});

type Node = Record<string, unknown>;

/**
 * Identifiers the expression reads that are neither a policy variable nor a comprehension variable:
 * the evaluator only finds them at call time, so load-time validation looks for them here.
 */
function unknownIdentifiers(expr: unknown, bound: ReadonlySet<string>, out: Set<string>): void {
  if (typeof expr !== "object" || expr === null) return;
  const kind = (expr as { exprKind?: { case?: string; value?: Node } }).exprKind;
  if (!kind?.case || !kind.value) return;
  const v = kind.value;
  switch (kind.case) {
    case "identExpr": {
      const name = v.name as string;
      if (!VARIABLES.has(name) && !bound.has(name)) out.add(name);
      return;
    }
    case "selectExpr":
      return unknownIdentifiers(v.operand, bound, out);
    case "callExpr":
      unknownIdentifiers(v.target, bound, out);
      for (const a of v.args as unknown[]) unknownIdentifiers(a, bound, out);
      return;
    case "listExpr":
      for (const e of v.elements as unknown[]) unknownIdentifiers(e, bound, out);
      return;
    case "structExpr":
      for (const e of v.entries as Node[]) {
        const key = e.keyKind as { case?: string; value?: unknown } | undefined;
        if (key?.case === "mapKey") unknownIdentifiers(key.value, bound, out);
        unknownIdentifiers(e.value, bound, out);
      }
      return;
    case "comprehensionExpr": {
      const inner = new Set([...bound, v.iterVar as string, v.accuVar as string]);
      if (typeof v.iterVar2 === "string" && v.iterVar2) inner.add(v.iterVar2);
      unknownIdentifiers(v.iterRange, bound, out);
      unknownIdentifiers(v.accuInit, bound, out);
      for (const part of [v.loopCondition, v.loopStep, v.result]) unknownIdentifiers(part, inner, out);
      return;
    }
    default:
      return;
  }
}

/** JSON -> CEL input: objects become maps (CEL's `has()` and field selection work on them). */
function celValue(value: unknown): CelInput {
  if (Array.isArray(value)) return value.map(celValue);
  if (typeof value === "object" && value !== null)
    return new Map(Object.entries(value).map(([k, v]) => [k, celValue(v)]));
  return value as CelInput;
}

function principalValue(p: Principal): CelInput {
  return celValue({
    id: p.id,
    kind: p.kind,
    tenant: p.tenant ?? "",
    roles: [...p.roles],
    scopes: [...p.scopes],
    capabilities: [...p.capabilities],
    agentId: p.agentId ?? "",
  });
}

/** Validates `mcp.policies` (each expression parsed and planned); throws ConfigError naming the field. */
export function resolveToolPolicies(input: unknown, path = "mcp.policies"): ToolPolicyOptions[] {
  if (input === undefined) return [];
  if (!Array.isArray(input)) throw new ConfigError(`${path} must be a list`);
  const names = new Set<string>();
  return input.map((raw, i) => {
    const at = `${path}[${i}]`;
    const o = readObject(raw, at);
    for (const key of Object.keys(o))
      if (!["name", "tool", "allow", "reason"].includes(key))
        throw new ConfigError(`${at}.${key} is not a policy field`);
    const name = readString(o, "name", at, "", { nonEmpty: true, pattern: /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/ });
    if (names.has(name)) throw new ConfigError(`${at}.name: duplicate policy name ${JSON.stringify(name)}`);
    names.add(name);
    const tool = readString(o, "tool", at, "", { nonEmpty: true, pattern: TOOL_PATTERN });
    const allow = readString(o, "allow", at, "", { nonEmpty: true });
    compileExpression(allow, `${at}.allow`);
    const reason = readString(o, "reason", at, `denied by policy ${name}`, { nonEmpty: true });
    return { name, tool, allow, reason };
  });
}

function compileExpression(source: string, field: string) {
  let parsed;
  try {
    parsed = parse(source);
  } catch (e) {
    throw new ConfigError(`${field}: not a CEL expression: ${e instanceof Error ? e.message.split("\n")[0] : "?"}`);
  }
  const unknown = new Set<string>();
  unknownIdentifiers(parsed.expr, new Set(), unknown);
  if (unknown.size > 0)
    throw new ConfigError(`${field}: unknown variable ${[...unknown].join(", ")} (use principal, tool, args)`);
  try {
    return plan(env, parsed);
  } catch (e) {
    throw new ConfigError(`${field}: ${e instanceof Error ? e.message.split("\n")[0] : "cannot be planned"}`);
  }
}

const applies = (pattern: string, tool: string) =>
  pattern === "*" || (pattern.endsWith("*") ? tool.startsWith(pattern.slice(0, -1)) : pattern === tool);

/** Compiles validated policies (see resolveToolPolicies). */
export function createToolPolicies(policies: readonly ToolPolicyOptions[]): ToolPolicies {
  const compiled = policies.map((p) => ({ ...p, run: compileExpression(p.allow, `policy ${p.name}`) }));
  return {
    size: compiled.length,
    decide(principal, tool, args) {
      const bindings = { principal: principalValue(principal), tool, args: celValue(args) };
      for (const p of compiled) {
        if (!applies(p.tool, tool)) continue;
        let result: unknown;
        try {
          result = p.run(bindings as never);
        } catch (e) {
          result = e;
        }
        if (result === true) continue;
        // An argument missing or of another type than the policy expects is an error: fail closed.
        const detail =
          result === false
            ? "false"
            : isCelError(result) || result instanceof Error
              ? `error: ${result.message.split("\n")[0]}`
              : "not a bool";
        return { allowed: false, policy: p.name, reason: p.reason, detail };
      }
      return { allowed: true };
    },
  };
}
