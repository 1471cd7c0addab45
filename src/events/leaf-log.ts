import { createSocket, type Socket } from "node:dgram";
import type { Meter } from "@opentelemetry/api";
import type { Clock } from "../common/index.js";
import type { Logger } from "../telemetry/index.js";

/** Severity of one nats-server log line. */
export type LeafLogLevel = "debug" | "info" | "warn" | "error";

/** One nats-server log line: its level and message, without the server's own prefix. */
export interface LeafLogLine {
  level: LeafLogLevel;
  message: string;
}

const STDERR_LEVELS: Record<string, LeafLogLevel> = {
  DBG: "debug",
  TRC: "debug",
  INF: "info",
  WRN: "warn",
  ERR: "error",
  FTL: "error",
};

/**
 * Parses a line of nats-server's own log in either of its forms: stderr/log file
 * (`[pid] 2026/12/01 23:40:23.387 [DBG] message`) or remote syslog (RFC 3164 as Go's log/syslog
 * writes it, `<7>2026-12-01T23:43:36Z host nats-server[pid]: message`, severity = priority % 8).
 * Undefined for anything else (continuation lines of the start-up banner have no level).
 */
export function parseLeafLogLine(line: string): LeafLogLine | undefined {
  const text = line.replace(/\r?\n$/, "");
  const syslog = /^<(\d{1,3})>\S+ \S+ [^:]*: (.*)$/s.exec(text);
  if (syslog) {
    const severity = Number(syslog[1]) % 8;
    const level: LeafLogLevel = severity >= 7 ? "debug" : severity >= 5 ? "info" : severity === 4 ? "warn" : "error";
    return { level, message: syslog[2]! };
  }
  const stderr = /^\[\d+\] \S+ \S+ \[([A-Z]{3})\] (.*)$/s.exec(text);
  if (stderr) {
    const level = STDERR_LEVELS[stderr[1]!];
    return level ? { level, message: stderr[2]! } : undefined;
  }
  return undefined;
}

/** A publish the edge's hub link refused, as the leaf's log names it. */
export interface LinkRefusal {
  subject: string;
  /**
   * "leaf": the edge's leaf held it back (nats-server's spoke side applies the permissions the hub
   * sent for this edge's user, and logs it at debug level only); "hub": the hub refused it and
   * closes the link (a leaf that did not know the permissions).
   */
  by: "leaf" | "hub";
}

// nats-server 2.9/2.10: client.go deliverMsg "Not permitted to deliver to %q" on a LEAF connection
// (lid), leafnode.go leafPermViolation's "Permissions Violation for Publish to %q" sent by the hub.
const REFUSAL = /\blid:\d+ - (Not permitted to deliver to|Permissions Violation for Publish to) "([^"]*)"/;

/** The refused publish a leaf log message reports, if it reports one. */
export function linkRefusalOf(message: string): LinkRefusal | undefined {
  const m = REFUSAL.exec(message);
  if (!m) return undefined;
  return { subject: m[2]!, by: m[1] === "Not permitted to deliver to" ? "leaf" : "hub" };
}

/** What the edge's hub link refused so far (GetStatus hub_link). */
export interface HubLinkRefusals {
  edgeId: string;
  rejectedPublishes: number;
  lastRejectedAt?: number;
  lastRejectedSubject?: string;
}

/**
 * The kernel's reader of its leaf nats-server's log: counts the publishes the hub link's
 * permissions refused (docs/events.md, "Link status") and passes the leaf's own warnings and errors
 * on to the kernel's log (its info lines at debug level).
 */
export interface LeafLog {
  /** Handles one log line (stderr of a supervised leaf, or one syslog datagram). */
  handle(line: string): void;
  status(): HubLinkRefusals;
}

const MAX_WARNED_SUBJECTS = 256;

/** Creates the leaf log reader for edge `edgeId`; metric `nops_events_hub_link_rejected_publishes{edge,by}`. */
export function createLeafLog(deps: { clock: Clock; logger: Logger; meter: Meter }, edgeId: string): LeafLog {
  const counter = deps.meter.createCounter("nops_events_hub_link_rejected_publishes", {
    description:
      "Publishes on this edge's leaf that its hub link's permissions refused, by where (leaf: held back, hub: refused)",
  });
  const state: HubLinkRefusals = { edgeId, rejectedPublishes: 0 };
  // A warning for the first refusal of each subject (bounded), so a misbehaving publisher cannot flood the log.
  const warned = new Set<string>();
  return {
    handle(line) {
      const parsed = parseLeafLogLine(line);
      if (!parsed) return;
      const refusal = linkRefusalOf(parsed.message);
      if (refusal) {
        state.rejectedPublishes++;
        state.lastRejectedAt = deps.clock.now();
        state.lastRejectedSubject = refusal.subject;
        counter.add(1, { edge: edgeId, by: refusal.by });
        // The leaf logs these at debug level; a refused subject is worth a warning here, once.
        const first = !warned.has(refusal.subject) && warned.size < MAX_WARNED_SUBJECTS;
        if (first) warned.add(refusal.subject);
        deps.logger[first ? "warn" : "debug"](
          { edge: edgeId, subject: refusal.subject, by: refusal.by },
          "hub link refused a publish (not allowed for this edge's hub user)",
        );
        return;
      }
      // Warnings and errors as such; its info lines (the start-up banner, connection events) at debug.
      if (parsed.level === "warn" || parsed.level === "error")
        deps.logger[parsed.level]({ leaf: parsed.message }, "leaf nats-server");
      else if (parsed.level === "info") deps.logger.debug({ leaf: parsed.message }, "leaf nats-server");
    },
    status: () => ({ ...state }),
  };
}

/** A UDP syslog listener on loopback receiving the leaf sidecar's log (`nats-server -D -r udp://127.0.0.1:<port>`). */
export interface LeafSyslogListener {
  readonly port: number;
  close(): Promise<void>;
}

/** Listens on 127.0.0.1:`port` (0 = any free port) and hands every datagram to `log`. */
export async function listenLeafSyslog(log: LeafLog, port: number): Promise<LeafSyslogListener> {
  const socket: Socket = createSocket("udp4");
  socket.on("message", (msg) => {
    // One datagram is one log line (Go's log/syslog writes each entry with its own header).
    for (const line of msg.toString("utf8").split("\n")) if (line !== "") log.handle(line);
  });
  await new Promise<void>((resolve, reject) => {
    socket.once("error", reject);
    socket.bind(port, "127.0.0.1", () => {
      socket.off("error", reject);
      resolve();
    });
  });
  return {
    port: socket.address().port,
    close: () => new Promise<void>((resolve) => socket.close(() => resolve())),
  };
}
