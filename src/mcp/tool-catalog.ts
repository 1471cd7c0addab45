import type { Agent } from "../../gen/nops/kernel/v1/agent_registry_pb.js";
import { compileObjectSchema, type CompiledSchema } from "../common/index.js";

/** One MCP tool: a capability routable in the caller's tenant. */
export interface CatalogTool {
  /** The tool name: the capability name (both allow 1-128 of [A-Za-z0-9._-]). */
  readonly name: string;
  readonly title: string;
  readonly description: string;
  /** Validates tools/call arguments; `undefined` when the capability declared no input schema. */
  readonly input?: CompiledSchema;
  /** Validates structured results; `undefined` when the capability declared no output schema. */
  readonly output?: CompiledSchema;
}

/** A tool as tools/list answers it (MCP 2025-11-25, "Tool"). */
export interface ListedTool {
  name: string;
  title: string;
  description: string;
  inputSchema: Record<string, unknown>;
  outputSchema?: Record<string, unknown>;
}

// Without a declared schema a tool takes any JSON object (MCP: inputSchema must describe an object).
const ANY_OBJECT: Record<string, unknown> = { type: "object" };

/**
 * The tools of a tenant from its routable agents. Agents offering the same capability are one tool;
 * its schemas are those of the agent registered first (lowest id order is stable across calls), so
 * the listing does not flap with heartbeats. Schemas were validated at registration; one that no
 * longer compiles (an older kernel's row) makes the tool schemaless rather than failing the list.
 */
export function catalogOf(agents: readonly Agent[]): Map<string, CatalogTool> {
  const sorted = [...agents].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  const tools = new Map<string, CatalogTool>();
  for (const agent of sorted) {
    for (const cap of agent.capabilities) {
      if (tools.has(cap.name)) continue;
      const compile = (field: string, text: string) => {
        if (!text) return undefined;
        try {
          return compileObjectSchema(field, text);
        } catch {
          return undefined;
        }
      };
      tools.set(cap.name, {
        name: cap.name,
        title: cap.attributes.title ?? cap.name,
        description:
          cap.attributes.description ?? `Capability "${cap.name}"${cap.version ? ` v${cap.version}` : ""} of this edge`,
        input: compile("input_schema", cap.inputSchema),
        output: compile("output_schema", cap.outputSchema),
      });
    }
  }
  return tools;
}

/** The tools/list entry of a tool. */
export function listedTool(tool: CatalogTool): ListedTool {
  return {
    name: tool.name,
    title: tool.title,
    description: tool.description,
    inputSchema: tool.input?.schema ?? ANY_OBJECT,
    ...(tool.output ? { outputSchema: tool.output.schema } : {}),
  };
}

/** A fingerprint of a listing: equal fingerprints mean clients need no notifications/tools/list_changed. */
export function catalogFingerprint(tools: ReadonlyMap<string, CatalogTool>): string {
  return JSON.stringify([...tools.values()].map(listedTool).sort((a, b) => (a.name < b.name ? -1 : 1)));
}
