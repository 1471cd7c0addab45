import type { ConnectionOptions } from "node:tls";
import {
  Code,
  ConnectError,
  createClient,
  createContextKey,
  createContextValues,
  type Client,
  type Interceptor,
} from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import {
  AgentRegistryService,
  AgentStatus,
  WatchAgentsResponse_ChangeType as ChangeType,
  type Agent,
  type WatchAgentsResponse,
} from "../../gen/nops/kernel/v1/agent_registry_pb.js";
import { RouteMode, RoutingService } from "../../gen/nops/kernel/v1/routing_pb.js";
import type { AuditLog } from "../audit/index.js";
import { unavailable, type Clock, type DependencyStatus, type TimerHandle } from "../common/index.js";
import { TENANT_HEADER } from "../egress/index.js";
import { invokeGrantAllows } from "../identity/index.js";
import {
  healthScore,
  HOPS_HEADER,
  type InvokeParams,
  type ScoringOptions,
  type InvokeResult,
  type RemoteAgents,
  type RemoteRoute,
  type StreamChunk,
} from "../routing/index.js";
import type { Logger } from "../telemetry/index.js";
import type { Delegations } from "./delegation.js";
import { DELEGATION_HEADER } from "./peer-principal.js";
import type { PeerRecord, PeerRegistry } from "./peer-registry.js";
import type { FederationOptions } from "./federation-options.js";

/**
 * Route constraint label naming the kernel a call must go to: a peer's SPIFFE ID sends it to that
 * peer even when local agents offer the capability (local agents come first otherwise).
 */
export const KERNEL_LABEL = "nops.io/kernel";

/** Dependencies of the cross-kernel routes. */
export interface PeerRoutesDeps {
  registry: PeerRegistry;
  delegations: Delegations;
  audit: AuditLog;
  clock: Clock;
  logger: Logger;
  /** This kernel's SPIFFE ID (the subject of the delegations its catalog watches carry). */
  selfId: () => string | undefined;
  /** mTLS client options that accept only a server presenting `peerId`; undefined without identity. */
  clientTls: (peerId: string) => ConnectionOptions | undefined;
  /** The Egress Guard on forwarded calls: they carry tenant data out of this kernel. */
  egress: Interceptor;
  /** The router's scoring: a peer's agents are scored like local ones, from the load its catalog reports. */
  scoring: ScoringOptions;
}

/** Cross-kernel routing: the peers' catalogs, link health and forwarding (docs/federation.md). */
export interface PeerRoutes extends RemoteAgents {
  /** Dependency probe "federation-links": degraded while an established peer cannot be reached. */
  probe(): DependencyStatus;
  start(): void;
  stop(): void;
}

/** The clients of one link, built for one set of TLS material. */
interface Conn {
  /** Material the clients were built with: rebuilt when the SVID or trust bundles change. */
  tlsKey: string;
  /** The HTTP/2 connections of both clients, closed when the link is dropped or drained after a rebuild. */
  sessions: Http2SessionManager[];
  registry: Client<typeof AgentRegistryService>;
  routing: Client<typeof RoutingService>;
  /** Calls (forwarded or catalog watches) still running on these connections. */
  active: number;
  /** Replaced by newer material: closed as soon as `active` drops to 0. */
  retired: boolean;
  /** Closes the retired connections when they take too long to drain. */
  drainTimer?: TimerHandle;
}

/** One tenant's routable agents on a peer, as its catalog watch reports them. */
interface Catalog {
  agents: Map<string, Agent>;
  /** When the watch last said SYNCED: everything up to then is in `agents`. */
  syncedAt: number;
}

interface Link {
  peer: string;
  conn: Conn;
  /** Routable agents per agreed tenant, kept across the watch's reopenings. */
  catalog: Map<string, Catalog>;
  /** The catalog watch of each agreed tenant; aborting ends it for good. */
  watches: Map<string, AbortController>;
  /** Last successful exchange with the peer (a watch's SYNCED or a forwarded call). */
  lastOk: number;
  lastError: string;
  /** EWMA of forwarded call latency, ms (link health; 0 until measured). */
  latencyMs: number;
  inFlight: number;
}

/**
 * How long connections replaced by a TLS rebuild (SVID rotation, a peer's refreshed bundle) may
 * drain the calls still running on them before they are closed anyway (a stream without deadline).
 */
export const RETIRED_CONN_DRAIN_MS = 60_000;

const ALPHA = 0.2;

// Trust headers of a forwarded call (delegation, hop count) are added after the Egress Guard looked at
// the call: like the handshake, they are trust material this kernel mints, not the tenant's data.
const kTrustHeaders = createContextKey<Record<string, string>>({}, { description: "federation trust headers" });
const attachTrustHeaders: Interceptor = (next) => (req) => {
  for (const [k, v] of Object.entries(req.contextValues.get(kTrustHeaders))) req.header.set(k, v);
  return next(req);
};

/** A peer's answer, or its absence, as this kernel's caller should see it. */
function forwardError(peer: string, err: unknown): ConnectError {
  const e = ConnectError.from(err);
  // The peer's own verdicts (denied, not found, deadline) pass through; a transport failure is UNAVAILABLE.
  // (connect-node reports a connection dropped during the TLS handshake as ABORTED.)
  if ([Code.Unavailable, Code.Unknown, Code.Internal, Code.Aborted].includes(e.code)) {
    return unavailable(`peer kernel ${peer} did not answer: ${e.rawMessage}`);
  }
  return new ConnectError(`peer kernel ${peer}: ${e.rawMessage}`, e.code);
}

/** Why a catalog watch is ended on purpose: it is reopened with a fresh delegation. */
class Renewal extends Error {
  override name = "Renewal";
}

/**
 * Creates the cross-kernel routes. Each established peer's catalog (the routable agents it offers
 * to each tenant of the outbound agreement) is kept current by a WatchAgents stream with a
 * delegation, reopened with a fresh one before it expires; a catalog whose last SYNCED is older
 * than `catalogStalenessMs` is not routed to and marks the link down. A call goes
 * to a peer only when no local agent can take it (or the constraints name the peer), the tenant
 * and capability are in the outbound agreement and the hop limit allows; the peer then picks its
 * own agent. Forwarded calls carry a fresh delegation, the hop count, the deadline and the trace
 * context, pass the Egress Guard, and are audited ("federation.forward").
 */
export function createPeerRoutes(deps: PeerRoutesDeps, options: FederationOptions): PeerRoutes {
  const { registry, delegations, clock, audit } = deps;
  const log = deps.logger.child({ component: "federation-routes" });
  const links = new Map<string, Link>();
  let timer: TimerHandle | undefined;
  let running = false;
  let unsubscribe: (() => void) | undefined;

  // Connections replaced by a rebuild that still carry calls (closed when drained, or on stop).
  const draining = new Set<Conn>();
  const abort = (conn: Conn) => {
    draining.delete(conn);
    clock.clearTimeout(conn.drainTimer);
    for (const s of conn.sessions) s.abort();
  };
  /**
   * Closes the connections of a rebuilt link once their last call ended: a rotation must not fail
   * the calls in flight (their TLS was verified when they connected; new calls use the new material).
   */
  const retire = (conn: Conn) => {
    conn.retired = true;
    if (conn.active === 0) return abort(conn);
    draining.add(conn);
    conn.drainTimer = clock.setTimeout(() => abort(conn), RETIRED_CONN_DRAIN_MS);
  };
  /** Takes the link's current connections for one call; `release` closes them after it if they were retired. */
  const acquire = (link: Link): Conn => {
    link.conn.active++;
    return link.conn;
  };
  const release = (conn: Conn) => {
    conn.active--;
    if (conn.retired && conn.active === 0) abort(conn);
  };
  const using = async <T>(link: Link, fn: (conn: Conn) => Promise<T>): Promise<T> => {
    const conn = acquire(link);
    try {
      return await fn(conn);
    } finally {
      release(conn);
    }
  };
  const linkOf = (peer: PeerRecord): Link | undefined => {
    const tls = deps.clientTls(peer.spiffeId);
    if (!tls) return undefined;
    const tlsKey = `${String(tls.cert)}|${String(tls.ca)}|${peer.grpcEndpoint}`;
    const old = links.get(peer.spiffeId);
    if (old && old.conn.tlsKey === tlsKey) return old;
    const baseUrl = `https://${peer.grpcEndpoint}`;
    // A silent partition is noticed by the HTTP/2 ping, not only by the next call's deadline.
    const session = () => new Http2SessionManager(baseUrl, { pingIntervalMs: 5000, pingTimeoutMs: 5000 }, tls);
    const sessions = [session(), session()];
    const transport = createGrpcTransport({
      baseUrl,
      sessionManager: sessions[0],
      // The first interceptor is the outermost: the guard runs before the trust headers exist.
      interceptors: [deps.egress, attachTrustHeaders],
    });
    const conn: Conn = {
      tlsKey,
      sessions,
      registry: createClient(
        AgentRegistryService,
        // The catalog fetch carries no tenant data (tenant ids of the agreement only): not guarded.
        createGrpcTransport({ baseUrl, sessionManager: sessions[1] }),
      ),
      routing: createClient(RoutingService, transport),
      active: 0,
      retired: false,
    };
    if (old) {
      retire(old.conn);
      old.conn = conn;
      return old;
    }
    const link: Link = {
      peer: peer.spiffeId,
      conn,
      catalog: new Map<string, Catalog>(),
      watches: new Map<string, AbortController>(),
      lastOk: 0,
      lastError: "",
      latencyMs: 0,
      inFlight: 0,
    };
    links.set(peer.spiffeId, link);
    return link;
  };

  const fresh = (at: number) => clock.now() - at <= options.catalogStalenessMs;
  const isUp = (link: Link) => link.lastOk > 0 && fresh(link.lastOk);

  const failed = (link: Link, tenant: string, err: unknown) => {
    const reason = err instanceof Error ? err.message : String(err);
    if (link.lastError !== reason) log.warn({ peer: link.peer, tenant, err: reason }, "peer catalog watch failed");
    link.lastError = reason;
  };

  /**
   * Runs one WatchAgents stream of `tenant`'s catalog on `link` until it fails, goes silent for
   * `catalogStalenessMs` (watchdog), or is renewed at 2/3 of its delegation's lifetime (resolves).
   * The catalog it replaces stays in use until the new stream's first SYNCED, so a renewal leaves
   * no gap.
   */
  async function watchOnce(link: Link, tenant: string, life: AbortSignal, self: string): Promise<void> {
    const { token, expiresAt } = await delegations.issue({ audience: link.peer, tenant, principal: self });
    const stream = new AbortController();
    const renewal = clock.setTimeout(
      () => stream.abort(new Renewal("delegation renewed")),
      ((expiresAt - clock.now()) * 2) / 3,
    );
    let watchdog: TimerHandle | undefined;
    const pet = () => {
      clock.clearTimeout(watchdog);
      watchdog = clock.setTimeout(
        () => stream.abort(new Error(`peer sent nothing on the catalog watch for ${options.catalogStalenessMs} ms`)),
        options.catalogStalenessMs,
      );
    };
    // Built from the stream's current set; becomes the catalog at its first SYNCED.
    let next: Map<string, Agent> | undefined = new Map<string, Agent>();
    const apply = (m: WatchAgentsResponse) => {
      if (m.type === ChangeType.SYNCED) {
        const now = clock.now();
        const current = link.catalog.get(tenant);
        if (next) link.catalog.set(tenant, { agents: next, syncedAt: now });
        else if (current) current.syncedAt = now;
        next = undefined;
        if (!isUp(link)) log.info({ peer: link.peer }, "federation link up");
        link.lastOk = now;
        link.lastError = "";
        return;
      }
      const agents = next ?? link.catalog.get(tenant)?.agents;
      if (!m.agent || !agents) return;
      if (m.type === ChangeType.DEREGISTERED || m.agent.status === AgentStatus.ZOMBIE) agents.delete(m.agent.id);
      else agents.set(m.agent.id, m.agent);
    };
    const signal = AbortSignal.any([life, stream.signal]);
    pet();
    try {
      await using(link, async (conn) => {
        const messages = conn.registry.watchAgents(
          { tenant, syncIntervalMs: options.catalogRefreshMs },
          { headers: { [DELEGATION_HEADER]: token, [HOPS_HEADER]: "1" }, signal },
        );
        for await (const m of messages) {
          pet();
          apply(m);
        }
      });
      throw new Error("peer ended the catalog watch");
    } catch (err) {
      // The client reports its own abort as CANCELED: the reason says why it was aborted.
      if (!stream.signal.aborted) throw err;
      if (stream.signal.reason instanceof Renewal) return;
      throw stream.signal.reason;
    } finally {
      clock.clearTimeout(renewal);
      clock.clearTimeout(watchdog);
    }
  }

  /**
   * Keeps `tenant`'s catalog of `link` watched until `life` aborts;
   * a failed watch is retried after `catalogRefreshMs`.
   */
  async function watchCatalog(link: Link, tenant: string, life: AbortSignal): Promise<void> {
    while (!life.aborted) {
      const self = deps.selfId();
      try {
        if (!self) throw new Error("this kernel has no workload identity");
        await watchOnce(link, tenant, life, self);
        continue;
      } catch (err) {
        if (life.aborted) break;
        failed(link, tenant, err);
      }
      await clock.sleep(options.catalogRefreshMs, life).catch(() => undefined);
    }
  }

  /** Starts and ends catalog watches to match the established peers and their outbound agreements. */
  const reconcile = () => {
    const peers = registry.list().filter((p) => p.state === "established");
    for (const [id, link] of links) {
      if (peers.some((p) => p.spiffeId === id)) continue;
      // A peer removed or quarantined is cut at once, calls in flight and watches included.
      for (const w of link.watches.values()) w.abort();
      abort(link.conn);
      links.delete(id);
    }
    for (const peer of peers) {
      const link = linkOf(peer);
      if (!link) continue;
      const tenants = peer.agreement.outbound.tenants;
      for (const [tenant, w] of link.watches) {
        if (tenants.includes(tenant)) continue;
        w.abort();
        link.watches.delete(tenant);
        link.catalog.delete(tenant);
      }
      for (const tenant of tenants) {
        if (link.watches.has(tenant)) continue;
        const life = new AbortController();
        link.watches.set(tenant, life);
        void watchCatalog(link, tenant, life.signal);
      }
    }
  };
  const reconcileLogged = () => {
    if (!running) return;
    try {
      reconcile();
    } catch (err) {
      log.error({ err }, "peer catalog watches could not be updated");
    }
  };
  // Peer changes (established, agreement, removal, quarantine, bundle) act at once; the tick also
  // catches this kernel's own SVID rotation, which rebuilds the links' TLS.
  const tick = () => {
    reconcileLogged();
    if (running) timer = clock.setTimeout(tick, options.catalogRefreshMs);
  };

  const offers = (agent: Agent, capability: string, version: string, labels: Record<string, string>) =>
    agent.capabilities.some((c) => c.name === capability && (!version || c.version === version)) &&
    Object.entries(labels).every(([k, v]) => k === KERNEL_LABEL || agent.labels[k] === v);

  // A remote offer is scored like a local agent (routing/health-score.ts, from the load and heartbeat
  // the peer's catalog reports), times the link's health: its forwarded-call latency added to the
  // floor and its calls in flight, as a local agent's own latency and in-flight count weigh.
  const { scoring } = deps;
  // An agent the peer reports no latency for counts as answering in the floor time (score 0.5).
  const UNMEASURED = 0.5;
  const linkHealth = (l: Link) => scoring.latencyFloorMs / ((l.latencyMs + scoring.latencyFloorMs) * (1 + l.inFlight));
  const agentScore = (a: Agent) => healthScore(a, undefined, clock.now(), scoring) ?? UNMEASURED;
  const score = (o: { link: Link; agents: Agent[] }) => Math.max(...o.agents.map(agentScore)) * linkHealth(o.link);

  function forwarded(link: Link, selection: RemoteRoute["selection"]): RemoteRoute {
    const request = (q: InvokeParams) => {
      const labels = { ...(q.constraints.labels ?? {}) };
      delete labels[KERNEL_LABEL];
      return {
        tenant: q.tenant,
        capability: q.capability,
        payload: q.payload,
        contentType: q.contentType,
        constraints: { labels, capabilityVersion: q.constraints.capabilityVersion ?? "", excludeAgentIds: [] },
        idempotent: q.idempotent,
      };
    };
    const callOptions = async (q: InvokeParams) => {
      const trust = {
        [DELEGATION_HEADER]: (
          await delegations.issue({
            audience: link.peer,
            tenant: q.tenant,
            principal: q.caller ?? "anonymous",
          })
        ).token,
        [HOPS_HEADER]: String((q.hops ?? 0) + 1),
      };
      // Whose data this is, for the Egress Guard on the way out.
      const headers: Record<string, string> = { [TENANT_HEADER]: q.tenant };
      if (q.traceparent) headers.traceparent = q.traceparent;
      if (q.tracestate) headers.tracestate = q.tracestate;
      if (q.requestId) headers["x-request-id"] = q.requestId;
      if (q.override) headers["x-enis-override"] = q.override;
      return {
        headers,
        contextValues: createContextValues().set(kTrustHeaders, trust),
        signal: q.signal,
        ...(q.timeoutMs !== undefined ? { timeoutMs: q.timeoutMs } : {}),
      };
    };
    const record = (q: InvokeParams, outcome: string, detail: Record<string, unknown>) => {
      try {
        audit.append({
          actor: q.caller ?? "anonymous",
          action: "federation.forward",
          tenant: q.tenant,
          resource: `peer/${link.peer}`,
          outcome,
          details: { capability: q.capability, hops: (q.hops ?? 0) + 1, ...detail },
          correlationId: q.requestId,
        });
      } catch (err) {
        log.error({ err }, "audit append failed");
      }
    };
    const measure = (started: number, ok: boolean) => {
      link.inFlight--;
      if (ok) {
        const ms = performance.now() - started;
        link.latencyMs = link.latencyMs === 0 ? ms : link.latencyMs + ALPHA * (ms - link.latencyMs);
        link.lastOk = clock.now();
      }
    };
    return {
      selection,
      async invoke(q): Promise<InvokeResult> {
        const started = performance.now();
        link.inFlight++;
        let ok = false;
        try {
          const res = await using(link, async (conn) => conn.routing.invoke(request(q), await callOptions(q)));
          ok = true;
          record(q, "ok", { agentId: res.agentId });
          return {
            payload: res.payload,
            contentType: res.contentType,
            agent: { ...selection.agent, id: res.agentId, name: res.agentName },
            attempts: res.attempts,
          };
        } catch (err) {
          const e = forwardError(link.peer, err);
          if (e.code === Code.Unavailable) link.lastError = e.rawMessage;
          record(q, "error", { code: Code[e.code], reason: e.rawMessage.slice(0, 300) });
          throw e;
        } finally {
          measure(started, ok);
        }
      },
      async *invokeStream(q): AsyncIterable<StreamChunk> {
        const started = performance.now();
        link.inFlight++;
        let ok = false;
        const conn = acquire(link);
        try {
          for await (const chunk of conn.routing.invokeStream(request(q), await callOptions(q))) {
            yield {
              payload: chunk.payload,
              contentType: chunk.contentType,
              agent: { ...selection.agent, id: chunk.agentId },
            };
          }
          ok = true;
          record(q, "ok", { stream: true });
        } catch (err) {
          const e = forwardError(link.peer, err);
          record(q, "error", { stream: true, code: Code[e.code], reason: e.rawMessage.slice(0, 300) });
          throw e;
        } finally {
          release(conn);
          measure(started, ok);
        }
      },
    };
  }

  return {
    pick(p, hasLocal) {
      if ((p.hops ?? 0) >= options.maxHops) return undefined;
      const wanted = p.constraints.labels?.[KERNEL_LABEL];
      const labels = p.constraints.labels ?? {};
      const version = p.constraints.capabilityVersion ?? "";
      const offering: { link: Link; peer: PeerRecord; agents: Agent[] }[] = [];
      for (const link of links.values()) {
        if (wanted && link.peer !== wanted) continue;
        const peer = registry.get(link.peer);
        if (!peer || peer.state !== "established") continue;
        const out = peer.agreement.outbound;
        if (!out.tenants.includes(p.tenant) || !out.capabilities.some((g) => invokeGrantAllows(g, p.capability))) {
          continue;
        }
        const catalog = link.catalog.get(p.tenant);
        const agents = catalog
          ? [...catalog.agents.values()].filter((a) => offers(a, p.capability, version, labels))
          : [];
        if (agents.length > 0) offering.push({ link, peer, agents });
      }
      if (offering.length === 0) return undefined;
      if (!wanted && hasLocal()) return undefined;
      const live = offering.filter((o) => isUp(o.link) && fresh(o.link.catalog.get(p.tenant)?.syncedAt ?? 0));
      if (live.length === 0) {
        const why = offering.map((o) => `${o.link.peer}: ${o.link.lastError || "catalog stale"}`).join("; ");
        throw unavailable(
          `capability "${p.capability}" is offered only by unreachable peer kernels (federation degraded, local-only): ${why}`,
        );
      }
      const scored = live.map((o) => ({ ...o, score: score(o) }));
      const best = scored.reduce((a, b) => (b.score > a.score ? b : a));
      // The peer picks its own agent; this one stands for the offer (the best scored).
      const agent = best.agents.reduce((a, b) => (agentScore(b) > agentScore(a) ? b : a));
      return forwarded(best.link, {
        agent: { ...agent, labels: { ...agent.labels, [KERNEL_LABEL]: best.link.peer } },
        mode: RouteMode.SCORED,
        reason: `remote: peer kernel ${best.link.peer} (${wanted ? "named by the constraints" : "no routable local agent"}; score ${best.score.toFixed(3)}, link ${Math.round(best.link.latencyMs)} ms)`,
        score: best.score,
        weight: 1,
        candidates: live.reduce((n, o) => n + o.agents.length, 0),
        fallback: !wanted,
      });
    },
    probe() {
      const down = registry
        .list()
        .filter((p) => p.state === "established" && p.agreement.outbound.tenants.length > 0)
        .map((p) => ({ p, link: links.get(p.spiffeId) }))
        .filter(({ link }) => !link || !isUp(link));
      return down.length === 0
        ? { name: "federation-links", state: "ok" }
        : {
            name: "federation-links",
            state: "degraded",
            detail: down
              .map(({ p, link }) => `${p.spiffeId} unreachable: ${link?.lastError || "no catalog yet"}`)
              .join("; ")
              .slice(0, 1000),
          };
    },
    start() {
      running = true;
      unsubscribe = registry.onPeerChange(reconcileLogged);
      tick();
    },
    stop() {
      running = false;
      unsubscribe?.();
      clock.clearTimeout(timer);
      for (const conn of [...draining]) abort(conn);
      for (const link of links.values()) {
        for (const w of link.watches.values()) w.abort();
        abort(link.conn);
      }
      links.clear();
    },
  };
}
