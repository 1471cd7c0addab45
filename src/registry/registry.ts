import { createHash, randomUUID } from "node:crypto";
import { create } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import {
  AgentSchema,
  AgentStatus,
  WatchAgentsResponse_ChangeType as ChangeType,
  type Agent,
} from "../../gen/nops/kernel/v1/agent_registry_pb.js";
import {
  AgentDeregisteredSchema,
  AgentHeartbeatSchema,
  AgentRegisteredSchema,
  AgentStatusChangedSchema,
  AgentUpdatedSchema,
} from "../../gen/nops/events/v1/agent_events_pb.js";
import { AgentLoadSchema } from "../../gen/nops/kernel/v1/agent_registry_pb.js";
import { createSqliteTransactor, type Db, type EventSink } from "../store/index.js";
import type { AuditLog } from "../audit/index.js";
import { type Clock, type TimerHandle, alreadyExists, notFound, resourceExhausted } from "../common/index.js";
import type { Logger } from "../telemetry/index.js";
import type { RegistryOptions } from "./registry-options.js";
import { createAgentStore, type AgentRow, type LoadRow } from "./agent-store.js";

/** Who asked, for the audit trail and events. */
export interface Actor {
  /** Principal id, "anonymous" or "system". */
  id: string;
  correlationId: string;
}

/** Fields a registration or update carries. */
export type AgentFields = Pick<AgentRow, "name" | "version" | "endpoint" | "capabilities" | "labels"> & {
  /** The SPIFFE ID the endpoint must present; set by the service from the caller, never by the request. */
  spiffeId?: string;
};

/** Fields UpdateAgent may change. */
export const UPDATABLE_FIELDS = ["name", "version", "endpoint", "capabilities", "labels"] as const;
/** One of UPDATABLE_FIELDS. */
export type UpdatableField = (typeof UPDATABLE_FIELDS)[number];

/** A ListAgents query. */
export interface AgentQuery {
  tenant: string;
  capability?: string;
  statuses?: readonly AgentStatus[];
  routableOnly?: boolean;
  /** Return agents with id greater than this (keyset pagination). */
  afterId?: string;
  limit: number;
}

/** One change, as WatchAgents streams it. */
export interface AgentChange {
  type: ChangeType;
  /** Absent for SYNCED. */
  agent?: Agent;
}

/** Options of one watch. */
export interface WatchOptions {
  /**
   * 0: changes only. Otherwise SYNCED after the current set and, every this many ms, HEARTBEAT for
   * each agent that beat since the previous tick (its latest state) followed by SYNCED.
   */
  syncIntervalMs?: number;
}

/** What an idempotent registration returns. */
export interface RegisterOutcome {
  agent: Agent;
  /** The key matched an earlier registration with the same content; nothing was written. */
  replayed: boolean;
}

/** The agent registry: durable writes, in-memory reads, derived liveness. */
export interface Registry {
  register(tenant: string, fields: AgentFields, actor: Actor): Agent;
  /**
   * Registers once per (tenant, idempotencyKey): a repeat with the same content returns the agent
   * the key created (replayed), a repeat with different content throws ALREADY_EXISTS. The key is
   * stored in the registration's transaction and forgotten when the agent is deregistered or reaped.
   */
  registerIdempotent(tenant: string, fields: AgentFields, idempotencyKey: string, actor: Actor): RegisterOutcome;
  get(tenant: string, id: string): Agent;
  list(query: AgentQuery): { agents: Agent[]; more: boolean };
  update(
    tenant: string,
    id: string,
    fields: Partial<AgentFields>,
    paths: readonly UpdatableField[],
    actor: Actor,
  ): Agent;
  deregister(tenant: string, id: string, reason: string, actor: Actor): void;
  /** Marks the agent alive; persisted in the next batch (see RegistryOptions.heartbeatFlushMs). */
  heartbeat(tenant: string, id: string, load: LoadRow | undefined): AgentStatus;
  /** Live agents of a tenant offering `capability` (zombies excluded): what routing picks from. */
  listRoutable(tenant: string, capability: string): Agent[];
  /** Streams the current agents, then every change (and with a sync interval, heartbeats), until `signal` aborts. */
  watch(tenant: string, capability: string, signal: AbortSignal, options?: WatchOptions): AsyncIterable<AgentChange>;
  /** Writes pending heartbeats now. */
  flush(): void;
  /** Re-derives statuses (emitting status_changed) and reaps zombies past reapAfterMs. */
  sweep(): void;
  /** Starts the flush and sweep timers. */
  start(): void;
  /** Stops the timers and flushes. */
  close(): void;
}

interface Entry {
  row: AgentRow;
  load?: LoadRow;
  status: AgentStatus;
  /** The Agent message of this state, built on first use; dropped by every change. */
  proto?: Agent | undefined;
  /** The idempotency key that created the agent, if any. */
  idem?: { key: string; contentHash: string };
}

/** Dependencies of the registry. */
export interface RegistryDeps {
  db: Db;
  events: EventSink;
  audit: AuditLog;
  clock: Clock;
  logger: Logger;
}

const WATCH_BUFFER = 1024;

const sortedRecord = (r: Record<string, string>) =>
  Object.fromEntries(Object.entries(r).sort(([a], [b]) => (a < b ? -1 : 1)));

/**
 * SHA-256 of a registration's content in a canonical form: map keys sorted and capabilities
 * ordered by name (names are unique), so a retry that serialises the same maps in another order
 * is still the same content.
 */
export function registrationHash(fields: AgentFields): string {
  const canonical = {
    name: fields.name,
    version: fields.version,
    endpoint: fields.endpoint,
    capabilities: [...fields.capabilities]
      .sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))
      .map((c) => ({
        name: c.name,
        version: c.version,
        attributes: sortedRecord(c.attributes),
        // Absent when empty, so registrations from before schemas existed hash as they did.
        ...(c.inputSchema ? { inputSchema: c.inputSchema } : {}),
        ...(c.outputSchema ? { outputSchema: c.outputSchema } : {}),
      })),
    labels: sortedRecord(fields.labels),
  };
  return createHash("sha256").update(JSON.stringify(canonical)).digest("hex");
}

const idemKey = (tenant: string, key: string) => `${tenant}\u0000${key}`;

/** Creates the registry and loads every agent from SQLite into memory. */
export function createRegistry(deps: RegistryDeps, options: RegistryOptions): Registry {
  const { db, events, audit, clock } = deps;
  const log = deps.logger.child({ component: "registry" });
  const store = createAgentStore(db);
  const tx = createSqliteTransactor(db);
  const agents = new Map<string, Entry>();
  const pendingBeats = new Map<string, number>();
  const watchers = new Set<{
    tenant: string;
    capability: string;
    push(change: AgentChange): void;
    /** Agents that beat since the last sync tick; only for watches with a sync interval. */
    beaten?: Set<string>;
  }>();
  const timers: TimerHandle[] = [];

  const statusAt = (heartbeatAt: number, now: number): AgentStatus => {
    const age = now - heartbeatAt;
    if (age <= options.heartbeatTtlMs) return AgentStatus.HEALTHY;
    if (age < options.zombieAfterMs) return AgentStatus.STALE;
    return AgentStatus.ZOMBIE;
  };

  // (tenant, idempotency key) -> agent id, for keys whose agent still exists.
  const keys = new Map<string, string>();
  for (const { agent, load } of store.loadAll()) {
    agents.set(agent.id, { row: agent, load, status: statusAt(agent.heartbeatAt, clock.now()) });
  }
  for (const k of store.loadIdempotency()) {
    const e = agents.get(k.agentId);
    if (!e) continue;
    e.idem = { key: k.key, contentHash: k.contentHash };
    keys.set(idemKey(k.tenant, k.key), k.agentId);
  }
  log.info({ agents: agents.size, idempotencyKeys: keys.size }, "registry loaded");

  const forget = (e: Entry) => {
    agents.delete(e.row.id);
    if (e.idem) keys.delete(idemKey(e.row.tenant, e.idem.key));
  };

  // Shared by every reader until the entry changes (routing reads it on every Invoke): callers
  // must not mutate the returned message.
  const toProto = (e: Entry): Agent =>
    (e.proto ??= create(AgentSchema, {
      id: e.row.id,
      tenant: e.row.tenant,
      name: e.row.name,
      version: e.row.version,
      endpoint: e.row.endpoint,
      capabilities: e.row.capabilities,
      labels: e.row.labels,
      status: e.status,
      registeredAt: timestampFromMs(e.row.registeredAt),
      heartbeatAt: timestampFromMs(e.row.heartbeatAt),
      load: e.load ? create(AgentLoadSchema, e.load) : undefined,
      revision: BigInt(e.row.revision),
      spiffeId: e.row.spiffeId,
    }));

  const offers = (e: Entry, capability: string) =>
    capability === "" || e.row.capabilities.some((c) => c.name === capability);

  const notify = (e: Entry, type: ChangeType) => {
    if (watchers.size === 0) return;
    const agent = toProto(e);
    for (const w of watchers) {
      if (w.tenant === e.row.tenant && offers(e, w.capability)) w.push({ type, agent });
    }
  };

  const lookup = (tenant: string, id: string): Entry => {
    const e = agents.get(id);
    // Another tenant's agent is reported as absent, so ids cannot be probed across tenants.
    if (!e || e.row.tenant !== tenant) throw notFound("agent", id);
    return e;
  };

  const flush = () => {
    if (pendingBeats.size === 0) return;
    const beats = [...pendingBeats];
    pendingBeats.clear();
    // One transaction (one fsync) for every heartbeat since the last flush.
    tx.transaction(() => {
      for (const [id, count] of beats) {
        const e = agents.get(id);
        if (!e) continue;
        store.touch(id, e.row.heartbeatAt, e.load);
        events.append({
          type: "agent.heartbeat.v1",
          tenant: e.row.tenant,
          schema: AgentHeartbeatSchema,
          payload: create(AgentHeartbeatSchema, {
            agentId: id,
            tenant: e.row.tenant,
            heartbeatAt: timestampFromMs(e.row.heartbeatAt),
            load: e.load ? create(AgentLoadSchema, e.load) : undefined,
            beats: count,
          }),
        });
      }
    });
  };

  const setStatus = (e: Entry, status: AgentStatus, system: Actor) => {
    const previous = e.status;
    e.status = status;
    e.proto = undefined;
    events.append({
      type: "agent.status_changed.v1",
      tenant: e.row.tenant,
      schema: AgentStatusChangedSchema,
      payload: create(AgentStatusChangedSchema, {
        agentId: e.row.id,
        tenant: e.row.tenant,
        previous,
        current: status,
        heartbeatAt: timestampFromMs(e.row.heartbeatAt),
      }),
      correlationId: system.correlationId,
    });
  };

  const sweep = () => {
    const now = clock.now();
    const system: Actor = { id: "system", correlationId: `sweep-${now}` };
    const changed: Entry[] = [];
    const reaped: Entry[] = [];
    tx.transaction(() => {
      for (const e of agents.values()) {
        if (now - e.row.heartbeatAt >= options.reapAfterMs) {
          store.delete(e.row.id);
          events.append({
            type: "agent.deregistered.v1",
            tenant: e.row.tenant,
            schema: AgentDeregisteredSchema,
            payload: create(AgentDeregisteredSchema, {
              agentId: e.row.id,
              tenant: e.row.tenant,
              reason: "reaped: no heartbeat",
              reaped: true,
            }),
            correlationId: system.correlationId,
          });
          audit.append({
            actor: system.id,
            action: "agent.reap",
            tenant: e.row.tenant,
            resource: `agent/${e.row.id}`,
            outcome: "ok",
            correlationId: system.correlationId,
          });
          reaped.push(e);
          continue;
        }
        const status = statusAt(e.row.heartbeatAt, now);
        if (status !== e.status) {
          setStatus(e, status, system);
          changed.push(e);
        }
      }
    });
    for (const e of reaped) {
      forget(e);
      notify(e, ChangeType.DEREGISTERED);
    }
    for (const e of changed) notify(e, ChangeType.STATUS_CHANGED);
    if (reaped.length) log.info({ reaped: reaped.length }, "reaped zombie agents");
  };

  const insert = (
    tenant: string,
    fields: AgentFields,
    actor: Actor,
    idem: { key: string; contentHash: string } | undefined,
  ): Agent => {
    const now = clock.now();
    const row: AgentRow = {
      id: randomUUID(),
      tenant,
      ...fields,
      spiffeId: fields.spiffeId ?? "",
      registeredAt: now,
      heartbeatAt: now,
      revision: 1,
    };
    const entry: Entry = { row, status: AgentStatus.HEALTHY, idem };
    const agent = toProto(entry);
    tx.transaction(() => {
      store.insert(row);
      if (idem)
        store.insertIdempotency({
          tenant,
          key: idem.key,
          agentId: row.id,
          contentHash: idem.contentHash,
          createdAt: now,
        });
      events.append({
        type: "agent.registered.v1",
        tenant,
        schema: AgentRegisteredSchema,
        payload: create(AgentRegisteredSchema, { agent }),
        correlationId: actor.correlationId,
      });
      audit.append({
        actor: actor.id,
        action: "agent.register",
        tenant,
        resource: `agent/${row.id}`,
        outcome: "ok",
        details: idem
          ? { name: row.name, endpoint: row.endpoint, idempotent: true }
          : { name: row.name, endpoint: row.endpoint },
        correlationId: actor.correlationId,
      });
    });
    agents.set(row.id, entry);
    if (idem) keys.set(idemKey(tenant, idem.key), row.id);
    notify(entry, ChangeType.REGISTERED);
    return agent;
  };

  return {
    register: (tenant, fields, actor) => insert(tenant, fields, actor, undefined),

    registerIdempotent(tenant, fields, idempotencyKey, actor) {
      const contentHash = registrationHash(fields);
      const existingId = keys.get(idemKey(tenant, idempotencyKey));
      const existing = existingId === undefined ? undefined : agents.get(existingId);
      if (existing?.idem) {
        if (existing.idem.contentHash !== contentHash) {
          throw alreadyExists(
            "registration for idempotency_key",
            JSON.stringify(idempotencyKey),
            `with different content (agent ${existing.row.id}); use a new key, or UpdateAgent to change that agent`,
          );
        }
        return { agent: toProto(existing), replayed: true };
      }
      return { agent: insert(tenant, fields, actor, { key: idempotencyKey, contentHash }), replayed: false };
    },

    get: (tenant, id) => toProto(lookup(tenant, id)),

    list(query) {
      const statuses = query.statuses?.length ? new Set(query.statuses) : undefined;
      const matches: Entry[] = [];
      for (const e of agents.values()) {
        if (e.row.tenant !== query.tenant) continue;
        if (query.afterId !== undefined && e.row.id <= query.afterId) continue;
        if (!offers(e, query.capability ?? "")) continue;
        if (statuses && !statuses.has(e.status)) continue;
        if (query.routableOnly && e.status === AgentStatus.ZOMBIE) continue;
        matches.push(e);
      }
      matches.sort((a, b) => (a.row.id < b.row.id ? -1 : 1));
      return { agents: matches.slice(0, query.limit).map(toProto), more: matches.length > query.limit };
    },

    update(tenant, id, fields, paths, actor) {
      const e = lookup(tenant, id);
      const row: AgentRow = { ...e.row, revision: e.row.revision + 1 };
      for (const p of paths) (row as unknown as Record<string, unknown>)[p] = fields[p];
      if (fields.spiffeId !== undefined) row.spiffeId = fields.spiffeId;
      const next: Entry = { ...e, row, proto: undefined };
      const agent = toProto(next);
      tx.transaction(() => {
        store.update(row);
        events.append({
          type: "agent.updated.v1",
          tenant,
          schema: AgentUpdatedSchema,
          payload: create(AgentUpdatedSchema, { agent, changedFields: [...paths] }),
          correlationId: actor.correlationId,
        });
        audit.append({
          actor: actor.id,
          action: "agent.update",
          tenant,
          resource: `agent/${id}`,
          outcome: "ok",
          details: { fields: paths },
          correlationId: actor.correlationId,
        });
      });
      agents.set(id, next);
      notify(next, ChangeType.UPDATED);
      return agent;
    },

    deregister(tenant, id, reason, actor) {
      const e = lookup(tenant, id);
      tx.transaction(() => {
        store.delete(id);
        events.append({
          type: "agent.deregistered.v1",
          tenant,
          schema: AgentDeregisteredSchema,
          payload: create(AgentDeregisteredSchema, { agentId: id, tenant, reason }),
          correlationId: actor.correlationId,
        });
        audit.append({
          actor: actor.id,
          action: "agent.deregister",
          tenant,
          resource: `agent/${id}`,
          outcome: "ok",
          details: { reason },
          correlationId: actor.correlationId,
        });
      });
      forget(e);
      pendingBeats.delete(id);
      notify(e, ChangeType.DEREGISTERED);
    },

    heartbeat(tenant, id, load) {
      const e = lookup(tenant, id);
      e.row.heartbeatAt = clock.now();
      if (load) e.load = load;
      e.proto = undefined;
      pendingBeats.set(id, (pendingBeats.get(id) ?? 0) + 1);
      for (const w of watchers) {
        if (w.beaten && w.tenant === tenant && offers(e, w.capability)) w.beaten.add(id);
      }
      if (e.status !== AgentStatus.HEALTHY) {
        // Recovery is reported at once; going stale is noticed by the sweep.
        tx.transaction(() => setStatus(e, AgentStatus.HEALTHY, { id: "system", correlationId: "" }));
        notify(e, ChangeType.STATUS_CHANGED);
      }
      return e.status;
    },

    listRoutable(tenant, capability) {
      const out: Agent[] = [];
      for (const e of agents.values()) {
        if (e.row.tenant === tenant && e.status !== AgentStatus.ZOMBIE && offers(e, capability)) out.push(toProto(e));
      }
      return out;
    },

    watch(tenant, capability, signal, watchOptions = {}) {
      const queue: AgentChange[] = [];
      let wake: (() => void) | undefined;
      let overflow = false;
      const syncIntervalMs = watchOptions.syncIntervalMs ?? 0;
      const watcher = {
        tenant,
        capability,
        push(change: AgentChange) {
          if (queue.length >= WATCH_BUFFER) overflow = true;
          else queue.push(change);
          wake?.();
        },
        beaten: syncIntervalMs > 0 ? new Set<string>() : undefined,
      };
      for (const e of agents.values()) {
        if (e.row.tenant === tenant && offers(e, capability))
          queue.push({ type: ChangeType.EXISTING, agent: toProto(e) });
      }
      let syncTimer: TimerHandle | undefined;
      if (watcher.beaten) {
        const beaten = watcher.beaten;
        queue.push({ type: ChangeType.SYNCED });
        // Load and heartbeat change on every beat: sent coalesced per tick, not per beat, so a
        // watcher's traffic is bounded by its agents and interval, not by the beat rate.
        syncTimer = clock.setInterval(() => {
          for (const id of beaten) {
            const e = agents.get(id);
            if (e && offers(e, capability)) watcher.push({ type: ChangeType.HEARTBEAT, agent: toProto(e) });
          }
          beaten.clear();
          watcher.push({ type: ChangeType.SYNCED });
        }, syncIntervalMs);
        syncTimer.unref();
      }
      watchers.add(watcher);
      const onAbort = () => wake?.();
      signal.addEventListener("abort", onAbort, { once: true });
      return (async function* () {
        try {
          while (!signal.aborted) {
            const change = queue.shift();
            if (change) {
              yield change;
              continue;
            }
            if (overflow) {
              // A watcher that cannot keep up must resync rather than silently miss changes.
              throw resourceExhausted("watcher fell behind; reconnect to resync");
            }
            await new Promise<void>((resolve) => (wake = resolve));
            wake = undefined;
          }
        } finally {
          watchers.delete(watcher);
          clock.clearInterval(syncTimer);
          signal.removeEventListener("abort", onAbort);
        }
      })();
    },

    flush,
    sweep,

    start() {
      // A failed background write is logged and retried on the next tick; it must not kill the process.
      const guarded = (name: string, fn: () => void) => () => {
        try {
          fn();
        } catch (err) {
          log.error({ err }, `${name} failed`);
        }
      };
      timers.push(
        clock.setInterval(guarded("heartbeat flush", flush), options.heartbeatFlushMs),
        clock.setInterval(guarded("sweep", sweep), options.sweepIntervalMs),
      );
      for (const t of timers) t.unref();
    },

    close() {
      for (const t of timers) clock.clearInterval(t);
      timers.length = 0;
      flush();
    },
  };
}
