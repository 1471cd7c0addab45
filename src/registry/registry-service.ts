import { create, toBinary } from "@bufbuild/protobuf";
import type { HandlerContext, ServiceImpl } from "@connectrpc/connect";
import { agentSpiffeId, kPrincipal, type Principal } from "../identity/index.js";
import { permissionDenied } from "../common/index.js";
import type { AgentRegistryService } from "../../gen/nops/kernel/v1/agent_registry_pb.js";
import { AgentSchema, type AgentLoad, type Capability } from "../../gen/nops/kernel/v1/agent_registry_pb.js";
import { kCorrelationId } from "../server/index.js";
import type { RegistryOptions } from "./registry-options.js";
import type { LoadRow } from "./agent-store.js";
import {
  checkAgentId,
  checkCapabilities,
  checkCapabilityName,
  checkEndpoint,
  checkIdempotencyKey,
  checkLoad,
  checkMap,
  checkTenant,
  checkText,
  invalid,
} from "./agent-validation.js";
import { UPDATABLE_FIELDS, type Actor, type AgentFields, type Registry, type UpdatableField } from "./registry.js";

/** Resolves who is calling, for audit (the authn interceptor's principal, or "anonymous"). */
export type ActorResolver = (ctx: HandlerContext) => string;

/** Dependencies of the registry service. */
export interface RegistryServiceDeps {
  registry: Registry;
  actorOf: ActorResolver;
  clock: { now(): number };
  /**
   * The kernel's trust domain, for the SPIFFE ID an agent registered without an agent SVID must
   * present. @default "nops.local"
   */
  trustDomain?: string;
}

/**
 * The SPIFFE ID the kernel will require of an agent's endpoint (docs/routing.md): the caller's own
 * SVID when an agent SVID registers itself; otherwise (API key, JWT, an operator's or admin's SVID)
 * the ID scheme's agent id in this kernel's trust domain,
 * spiffe://<td>/nops/tenant/<tenant>/agent/<name>, so no tenant can point the kernel at a workload
 * of another tenant.
 */
export function expectedAgentSpiffeId(
  principal: Principal | undefined,
  trustDomain: string,
  tenant: string,
  name: string,
): string {
  if (principal?.kind === "spiffe" && principal.agentId === name && principal.tenant === tenant) return principal.id;
  return agentSpiffeId(trustDomain, tenant, name);
}

const MAX_PAGE = 1000;
const DEFAULT_PAGE = 100;
// A watch's sync tick: faster would cost the kernel a timer wake-up per watcher for little; slower
// than a minute bounds no useful staleness.
const MIN_SYNC_INTERVAL_MS = 100;
const MAX_SYNC_INTERVAL_MS = 60_000;

function capabilityRows(caps: readonly Capability[]): AgentFields["capabilities"] {
  return caps.map((c) => ({
    name: c.name,
    version: c.version,
    attributes: { ...c.attributes },
    ...(c.inputSchema ? { inputSchema: c.inputSchema } : {}),
    ...(c.outputSchema ? { outputSchema: c.outputSchema } : {}),
  }));
}

function loadRow(load: AgentLoad | undefined, now: number): LoadRow | undefined {
  return (
    load && {
      inFlight: load.inFlight,
      cpu: load.cpu,
      latencyP50Ms: load.latencyP50Ms,
      latencyP99Ms: load.latencyP99Ms,
      errorRate: load.errorRate,
      reportedAt: now,
    }
  );
}

// Page tokens are opaque to clients: the last id seen plus the filter they belong to, so a
// token cannot be replayed against a different query.
function encodePageToken(afterId: string, filterKey: string): string {
  return Buffer.from(JSON.stringify({ a: afterId, f: filterKey })).toString("base64url");
}

function decodePageToken(token: string, filterKey: string): string {
  let parsed: unknown;
  try {
    parsed = JSON.parse(Buffer.from(token, "base64url").toString("utf8"));
  } catch {
    return invalid("page_token", "is malformed");
  }
  const t = parsed as { a?: unknown; f?: unknown };
  if (typeof t.a !== "string" || typeof t.f !== "string") invalid("page_token", "is malformed");
  if (t.f !== filterKey) invalid("page_token", "belongs to a different query");
  return t.a;
}

// A principal that is only an AGENT and bound to one agent acts on that agent alone; wider roles
// (operators, admins) are not limited by a binding.
function boundAgentOf(ctx: HandlerContext): string | undefined {
  const p = ctx.values.get(kPrincipal);
  if (!p?.agentId || !p.roles.includes("AGENT")) return undefined;
  return p.roles.some((r) => r === "SUPER_ADMIN" || r === "ADMIN" || r === "OPERATOR") ? undefined : p.agentId;
}

function checkSelf(bound: string | undefined, agent: { id: string; name: string }): void {
  if (bound !== undefined && bound !== agent.name && bound !== agent.id) {
    throw permissionDenied("permission denied: an agent may act only on itself");
  }
}

/** AgentRegistryService handlers: validate, then delegate to the registry. */
export function createRegistryService(
  deps: RegistryServiceDeps,
  options: RegistryOptions,
): ServiceImpl<typeof AgentRegistryService> {
  const { registry } = deps;
  const trustDomain = deps.trustDomain ?? "nops.local";
  const spiffeIdFor = (ctx: HandlerContext, tenant: string, name: string): string =>
    expectedAgentSpiffeId(ctx.values.get(kPrincipal), trustDomain, tenant, name);
  const actor = (ctx: HandlerContext): Actor => ({
    id: deps.actorOf(ctx),
    correlationId: ctx.values.get(kCorrelationId),
  });
  const checkFields = (prefix: string, f: AgentFields) => {
    checkText(`${prefix}name`, f.name, 128);
    checkText(`${prefix}version`, f.version, 64);
    checkEndpoint(`${prefix}endpoint`, f.endpoint);
    checkCapabilities(`${prefix}capabilities`, f.capabilities);
    checkMap(`${prefix}labels`, f.labels, 64, 256);
  };
  const checkSize = (prefix: string, f: AgentFields) => {
    const bytes = toBinary(AgentSchema, create(AgentSchema, f)).byteLength;
    if (bytes > options.maxAgentBytes) {
      const field =
        JSON.stringify(f.capabilities).length >= JSON.stringify(f.labels).length ? "capabilities" : "labels";
      invalid(`${prefix}${field}`, `agent record is ${bytes} bytes, more than the limit of ${options.maxAgentBytes}`);
    }
  };

  return {
    registerAgent(req, ctx) {
      checkTenant("tenant", req.tenant);
      const fields: AgentFields = {
        name: req.name,
        version: req.version,
        endpoint: req.endpoint,
        capabilities: capabilityRows(req.capabilities),
        labels: { ...req.labels },
      };
      checkFields("", fields);
      checkSize("", fields);
      checkSelf(boundAgentOf(ctx), { id: "", name: fields.name });
      fields.spiffeId = spiffeIdFor(ctx, req.tenant, fields.name);
      if (req.idempotencyKey === "") return { agent: registry.register(req.tenant, fields, actor(ctx)) };
      checkIdempotencyKey("idempotency_key", req.idempotencyKey);
      return registry.registerIdempotent(req.tenant, fields, req.idempotencyKey, actor(ctx));
    },

    getAgent(req) {
      checkTenant("tenant", req.tenant);
      checkAgentId("id", req.id);
      return { agent: registry.get(req.tenant, req.id) };
    },

    listAgents(req) {
      checkTenant("tenant", req.tenant);
      if (req.capability) checkCapabilityName("capability", req.capability);
      if (req.pageSize > MAX_PAGE) invalid("page_size", `must be at most ${MAX_PAGE} (got ${req.pageSize})`);
      const filterKey = JSON.stringify([req.tenant, req.capability, [...req.statuses].sort(), req.routableOnly]);
      const afterId = req.pageToken ? decodePageToken(req.pageToken, filterKey) : undefined;
      const limit = req.pageSize || DEFAULT_PAGE;
      const page = registry.list({
        tenant: req.tenant,
        capability: req.capability,
        statuses: req.statuses,
        routableOnly: req.routableOnly,
        afterId,
        limit,
      });
      const last = page.agents.at(-1);
      return { agents: page.agents, nextPageToken: page.more && last ? encodePageToken(last.id, filterKey) : "" };
    },

    updateAgent(req, ctx) {
      const a = req.agent;
      if (!a) return invalid("agent", "is required");
      checkTenant("agent.tenant", a.tenant);
      checkAgentId("agent.id", a.id);
      const paths = req.updateMask?.paths ?? [];
      if (paths.length === 0) invalid("update_mask", "must name at least one field");
      paths.forEach((p, i) => {
        if (!(UPDATABLE_FIELDS as readonly string[]).includes(p)) {
          invalid(
            `update_mask.paths[${i}]`,
            `unknown or read-only field "${p}" (updatable: ${UPDATABLE_FIELDS.join(", ")})`,
          );
        }
      });
      const current = registry.get(a.tenant, a.id);
      const bound = boundAgentOf(ctx);
      checkSelf(bound, current);
      const merged: AgentFields = {
        name: current.name,
        version: current.version,
        endpoint: current.endpoint,
        capabilities: capabilityRows(current.capabilities),
        labels: { ...current.labels },
      };
      const patch: AgentFields = {
        name: a.name,
        version: a.version,
        endpoint: a.endpoint,
        capabilities: capabilityRows(a.capabilities),
        labels: { ...a.labels },
      };
      for (const p of paths as UpdatableField[]) (merged as unknown as Record<string, unknown>)[p] = patch[p];
      checkFields("agent.", merged);
      checkSize("agent.", merged);
      if (bound !== undefined && merged.name !== current.name)
        throw permissionDenied("permission denied: an agent may not rename itself");
      // A new endpoint or name is bound anew to who asked for it, as at registration.
      if (paths.includes("endpoint") || paths.includes("name"))
        merged.spiffeId = spiffeIdFor(ctx, a.tenant, merged.name);
      return { agent: registry.update(a.tenant, a.id, merged, [...new Set(paths)] as UpdatableField[], actor(ctx)) };
    },

    deregisterAgent(req, ctx) {
      checkTenant("tenant", req.tenant);
      checkAgentId("id", req.id);
      checkText("reason", req.reason, 512, false);
      checkSelf(boundAgentOf(ctx), registry.get(req.tenant, req.id));
      registry.deregister(req.tenant, req.id, req.reason, actor(ctx));
      return {};
    },

    heartbeat(req, ctx) {
      checkTenant("tenant", req.tenant);
      checkAgentId("id", req.id);
      checkLoad("load", req.load);
      const bound = boundAgentOf(ctx);
      if (bound !== undefined) checkSelf(bound, registry.get(req.tenant, req.id));
      const status = registry.heartbeat(req.tenant, req.id, loadRow(req.load, deps.clock.now()));
      return { status, nextHeartbeatMs: Math.max(1, Math.floor(options.heartbeatTtlMs / 3)) };
    },

    async *watchAgents(req, ctx) {
      checkTenant("tenant", req.tenant);
      if (req.capability) checkCapabilityName("capability", req.capability);
      const sync = req.syncIntervalMs;
      if (sync !== 0 && (sync < MIN_SYNC_INTERVAL_MS || sync > MAX_SYNC_INTERVAL_MS)) {
        invalid("sync_interval_ms", `must be 0 or ${MIN_SYNC_INTERVAL_MS}..${MAX_SYNC_INTERVAL_MS} (got ${sync})`);
      }
      for await (const change of registry.watch(req.tenant, req.capability, ctx.signal, { syncIntervalMs: sync })) {
        yield { type: change.type, agent: change.agent };
      }
    },
  };
}
