import type { Socket } from "node:net";
import type { Meter } from "@opentelemetry/api";
import type { Logger } from "pino";
import { descriptorLimit } from "./descriptor-usage.js";

/** Which listening port a connection arrived on. */
export type ListenerName = "grpc" | "http";

/** Why the kernel closed a connection itself (the `reason` label of nops_connections_reaped_total). */
export type ReapReason =
  | "handshake-timeout"
  | "headers-timeout"
  | "request-timeout"
  | "idle"
  | "ping-timeout"
  | "h2-error"
  | "h2-goaway"
  | "h2-frame-error"
  | "shutdown";

/** Resolved connection budget (see LimitOptions.maxConnections / maxConnectionsPerIp). */
export interface ConnectionBudget {
  /** Open connections, both ports together. */
  maxConnections: number;
  /** Open connections from one remote address, both ports together. */
  maxConnectionsPerIp: number;
}

/** Dependencies of the connection guard. */
export interface ConnectionGuardDeps {
  meter?: Meter;
  logger?: Logger;
}

/** Counts of what the guard admitted, refused and reaped: for tests, health and the runbook. */
export interface ConnectionGuardStats {
  open: number;
  refused: number;
  reaped: number;
}

/**
 * The connection budget shared by both ports: admits or refuses each accepted socket before any
 * TLS or HTTP work, tracks it until it closes, and counts the connections the kernel reaps.
 */
export interface ConnectionGuard {
  /** Admits `socket` (tracked until it closes) or resets it at once; true when admitted. */
  admit(socket: Socket, listener: ListenerName): boolean;
  /** Records that the kernel closed a connection itself, and why. */
  reaped(listener: ListenerName, reason: ReapReason): void;
  stats(): ConnectionGuardStats;
}

/** Reserve of descriptors kept for SQLite, NATS, Redis, outbound calls and the log when the budget is derived. */
export const DESCRIPTOR_RESERVE = 64;
/** Budget when the descriptor limit is unknown or unlimited. */
export const DEFAULT_MAX_CONNECTIONS_UNBOUNDED = 10_000;

/**
 * The total budget for `configured` (0 = derive from the descriptor soft limit: 80% of what the
 * reserve leaves, so the process still has descriptors for its own files and outbound calls when
 * the budget is full).
 */
export function resolveMaxConnections(configured: number, limit: number | undefined = descriptorLimit()): number {
  if (configured > 0) return configured;
  if (limit === undefined || !Number.isFinite(limit)) return DEFAULT_MAX_CONNECTIONS_UNBOUNDED;
  return Math.max(16, Math.floor((limit - DESCRIPTOR_RESERVE) * 0.8));
}

// A remote address without a port: what the per-address budget counts.
function sourceOf(socket: Socket): string {
  return socket.remoteAddress ?? "unknown";
}

/** Creates the connection guard (one per kernel: the budget spans both ports). */
export function createConnectionGuard(deps: ConnectionGuardDeps, budget: ConnectionBudget): ConnectionGuard {
  const perIp = new Map<string, number>();
  const open: Record<ListenerName, number> = { grpc: 0, http: 0 };
  let refused = 0;
  let reapedTotal = 0;
  let lastWarnAt = 0;
  const refusedCounter = deps.meter?.createCounter("nops_connections_refused_total", {
    description: "Connections reset at accept because a connection budget was full, by listener and budget",
  });
  const reapedCounter = deps.meter?.createCounter("nops_connections_reaped_total", {
    description: "Connections the kernel closed itself (timeouts, HTTP/2 errors, dead peers), by listener and reason",
  });
  deps.meter
    ?.createObservableGauge("nops_connections_open", { description: "Open connections, by listener" })
    .addCallback((r) => {
      r.observe(open.grpc, { listener: "grpc" });
      r.observe(open.http, { listener: "http" });
    });

  const refuse = (socket: Socket, listener: ListenerName, scope: "total" | "per-ip"): false => {
    refused++;
    refusedCounter?.add(1, { listener, budget: scope });
    const now = Date.now();
    // One line a minute: a flood must not become a flood of log lines.
    if (now - lastWarnAt > 60_000) {
      lastWarnAt = now;
      deps.logger?.warn(
        { listener, budget: scope, remote: sourceOf(socket), open: open.grpc + open.http },
        "connection budget full: resetting new connections (nops_connections_refused_total counts them)",
      );
    }
    // A reset frees the descriptor now and leaves no TIME_WAIT behind on our side.
    if (typeof socket.resetAndDestroy === "function") socket.resetAndDestroy();
    else socket.destroy();
    return false;
  };

  return {
    admit(socket, listener) {
      const ip = sourceOf(socket);
      const fromIp = perIp.get(ip) ?? 0;
      if (open.grpc + open.http >= budget.maxConnections) return refuse(socket, listener, "total");
      if (fromIp >= budget.maxConnectionsPerIp) return refuse(socket, listener, "per-ip");
      perIp.set(ip, fromIp + 1);
      open[listener]++;
      socket.once("close", () => {
        open[listener]--;
        const n = (perIp.get(ip) ?? 1) - 1;
        if (n <= 0) perIp.delete(ip);
        else perIp.set(ip, n);
      });
      return true;
    },
    reaped(listener, reason) {
      reapedTotal++;
      reapedCounter?.add(1, { listener, reason });
    },
    stats: () => ({ open: open.grpc + open.http, refused, reaped: reapedTotal }),
  };
}
