import { ScalarType, type DescField, type DescMessage } from "@bufbuild/protobuf";

/** The tenants a request message targets. */
export interface TenantTargets {
  /** The message type has at least one tenant field (top level or nested). */
  readonly hasField: boolean;
  /** Distinct non-empty tenant values found in the message. */
  readonly tenants: readonly string[];
}

/** Name of the field that carries a tenant, at any level the extractor looks at. */
export const TENANT_FIELD = "tenant";
/** How deep below the request message tenant fields are looked for (UpdateAgent: agent.tenant is depth 1). */
export const MAX_TENANT_DEPTH = 3;

// One step of the precomputed walk: read a tenant string, or descend into message fields.
type Step =
  | { kind: "tenant"; name: string; oneof: string | undefined }
  | { kind: "message"; name: string; oneof: string | undefined; list: boolean; steps: Step[] };

const NONE: TenantTargets = { hasField: false, tenants: [] };

function fieldOneof(field: DescField): string | undefined {
  return field.oneof?.localName;
}

// Only branches that lead to a tenant field are kept, so Heartbeat's plan is one string read.
function buildPlan(desc: DescMessage, depth: number, seen: ReadonlySet<DescMessage>): Step[] {
  const steps: Step[] = [];
  for (const field of desc.fields) {
    if (field.fieldKind === "scalar" && field.scalar === ScalarType.STRING && field.name === TENANT_FIELD) {
      steps.push({ kind: "tenant", name: field.localName, oneof: fieldOneof(field) });
      continue;
    }
    if (depth >= MAX_TENANT_DEPTH) continue;
    const child =
      field.fieldKind === "message"
        ? field.message
        : field.fieldKind === "list" && field.listKind === "message"
          ? field.message
          : undefined;
    if (!child || seen.has(child)) continue;
    const sub = buildPlan(child, depth + 1, new Set([...seen, child]));
    if (sub.length > 0)
      steps.push({
        kind: "message",
        name: field.localName,
        oneof: fieldOneof(field),
        list: field.fieldKind === "list",
        steps: sub,
      });
  }
  return steps;
}

// protobuf-es v2 keeps a oneof member under the oneof's name as { case, value }.
function read(message: Record<string, unknown>, name: string, oneof: string | undefined): unknown {
  if (oneof === undefined) return message[name];
  const o = message[oneof] as { case?: string; value?: unknown } | undefined;
  return o?.case === name ? o.value : undefined;
}

function collect(steps: readonly Step[], message: Record<string, unknown>, out: Set<string>): void {
  for (const step of steps) {
    const value = read(message, step.name, step.oneof);
    if (step.kind === "tenant") {
      if (typeof value === "string" && value !== "") out.add(value);
    } else if (step.list) {
      if (Array.isArray(value))
        for (const item of value)
          if (item && typeof item === "object") collect(step.steps, item as Record<string, unknown>, out);
    } else if (value && typeof value === "object") {
      collect(step.steps, value as Record<string, unknown>, out);
    }
  }
}

/** Reads the tenants a message of `schema` targets. */
export type TenantExtractor = (schema: DescMessage, message: unknown) => TenantTargets;

/**
 * Creates an extractor that finds every `tenant` string field of a request message: top level,
 * in singular or repeated message fields and in oneofs, down to MAX_TENANT_DEPTH; map values are
 * not searched. Generic over the input descriptor, so any RPC with a tenant field is covered
 * without configuration; the walk is planned once per message type.
 */
export function createTenantExtractor(): TenantExtractor {
  const plans = new WeakMap<DescMessage, Step[]>();
  return (schema, message) => {
    let plan = plans.get(schema);
    if (!plan) {
      plan = buildPlan(schema, 0, new Set([schema]));
      plans.set(schema, plan);
    }
    if (plan.length === 0) return NONE;
    const out = new Set<string>();
    if (message && typeof message === "object") collect(plan, message as Record<string, unknown>, out);
    return { hasField: true, tenants: [...out] };
  };
}
