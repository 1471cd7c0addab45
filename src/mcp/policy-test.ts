import type { Principal } from "../identity/index.js";
import { ConfigError } from "../common/index.js";
import type { ToolPolicies } from "./tool-policies.js";

/** One case of `nops-kernel policy test`: a call and the decision expected for it. */
export interface PolicyCase {
  name: string;
  tool: string;
  principal: Principal;
  args: Record<string, unknown>;
  expect: "allow" | "deny";
}

/** The outcome of one case. */
export interface PolicyCaseResult {
  name: string;
  passed: boolean;
  /** A line for the terminal: "PASS <name>: allow" or "FAIL <name>: expected deny, got allow". */
  line: string;
}

const record = (v: unknown, field: string): Record<string, unknown> => {
  if (typeof v !== "object" || v === null || Array.isArray(v)) throw new ConfigError(`${field} must be an object`);
  return v as Record<string, unknown>;
};
const strings = (v: unknown, field: string): string[] => {
  if (v === undefined) return [];
  if (!Array.isArray(v) || v.some((x) => typeof x !== "string"))
    throw new ConfigError(`${field} must be a list of strings`);
  return v as string[];
};

/** A principal from a test case: `{tenant, roles, scopes, capabilities, id, kind, agentId}`, all optional. */
export function principalFrom(raw: unknown, field: string): Principal {
  const o = record(raw ?? {}, field);
  const text = (key: string, fallback: string) => {
    const v = o[key] ?? fallback;
    if (typeof v !== "string") throw new ConfigError(`${field}.${key} must be a string`);
    return v;
  };
  const kind = text("kind", "jwt");
  if (!["spiffe", "jwt", "apikey", "signed"].includes(kind))
    throw new ConfigError(`${field}.kind must be spiffe, jwt, apikey or signed`);
  return {
    kind: kind as Principal["kind"],
    id: text("id", "test"),
    tenant: o.tenant === undefined ? undefined : text("tenant", ""),
    roles: strings(o.roles, `${field}.roles`) as Principal["roles"],
    scopes: strings(o.scopes, `${field}.scopes`),
    capabilities: strings(o.capabilities, `${field}.capabilities`),
    ...(o.agentId === undefined ? {} : { agentId: text("agentId", "") }),
  };
}

/** Reads a list of cases (parsed YAML or JSON); throws ConfigError naming the bad field. */
export function readPolicyCases(raw: unknown): PolicyCase[] {
  if (!Array.isArray(raw)) throw new ConfigError("cases must be a list");
  return raw.map((c, i) => {
    const at = `cases[${i}]`;
    const o = record(c, at);
    if (typeof o.tool !== "string" || o.tool === "") throw new ConfigError(`${at}.tool must be a tool name`);
    if (o.expect !== "allow" && o.expect !== "deny") throw new ConfigError(`${at}.expect must be allow or deny`);
    return {
      name: typeof o.name === "string" && o.name ? o.name : `#${i + 1} ${o.tool}`,
      tool: o.tool,
      principal: principalFrom(o.principal, `${at}.principal`),
      args: record(o.args ?? {}, `${at}.args`),
      expect: o.expect,
    };
  });
}

/** Runs the cases against the policies. */
export function runPolicyCases(policies: ToolPolicies, cases: readonly PolicyCase[]): PolicyCaseResult[] {
  return cases.map((c) => {
    const d = policies.decide(c.principal, c.tool, c.args);
    const got = d.allowed ? "allow" : "deny";
    const why = d.allowed ? "" : ` (policy ${d.policy}: ${d.detail})`;
    const passed = got === c.expect;
    return {
      name: c.name,
      passed,
      line: passed ? `PASS ${c.name}: ${got}${why}` : `FAIL ${c.name}: expected ${c.expect}, got ${got}${why}`,
    };
  });
}
