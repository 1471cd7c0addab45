import type * as http2 from "node:http2";
import type { Socket } from "node:net";
import type { ConnectionGuard, ListenerName, ReapReason } from "./connection-guard.js";

/** Timeouts the HTTP/2 session guard enforces (resolved from LimitOptions). */
export interface Http2SessionGuardOptions {
  /** A session that has opened no stream this long after it started (no preface, no request) is closed. */
  headersTimeoutMs: number;
  /** A session with no open stream for this long is closed. */
  sessionIdleTimeoutMs: number;
  /** A PING not acknowledged within this is a dead or wedged session: it is destroyed. */
  pingTimeoutMs: number;
  /** A stream must have sent its whole request within this (then it is reset with CANCEL). */
  requestTimeoutMs: number;
  /** How often sessions are checked. @default 1000 */
  sweepIntervalMs?: number;
}

/** Dependencies of the session guard. */
export interface Http2SessionGuardDeps {
  guard: ConnectionGuard;
  listener: ListenerName;
}

/** Watches every HTTP/2 session of a server and closes, and counts, the ones that must not stay open. */
export interface Http2SessionGuard {
  /** Starts watching `session`; `raw` is the accepted TCP socket under it (destroyed as the last resort). */
  track(session: http2.ServerHttp2Session, raw: Socket): void;
  /** Sessions being watched. */
  size(): number;
  /** Stops the sweep (the sessions themselves are closed by the server's shutdown). */
  close(): void;
}

interface Watched {
  raw: Socket;
  openStreams: number;
  /** No stream yet: the first one must come within headersTimeoutMs. */
  started: boolean;
  /** The peer sent GOAWAY: close once its last stream is done. */
  goaway: boolean;
  idleSince: number;
  lastRead: number;
  /** Input arrived since the last confirmed-alive ping: check the session still answers. */
  probe: boolean;
  pingSentAt: number | undefined;
  reaped: boolean;
}

const DEFAULT_SWEEP_MS = 1000;
// Long enough for the GOAWAY nghttp2 queued to leave, short enough that a flood does not pile up.
const FLUSH_BEFORE_DESTROY_MS = 250;

/**
 * On Node 20, when nghttp2 answers a connection error itself (bad HPACK, DATA on stream 0, an
 * oversize or truncated frame, too many resets) it sends GOAWAY and stops reading, but Node emits
 * no event and never closes the socket: the descriptor leaks for good (test/server/
 * http2-session-guard.test.ts reproduces it). So the kernel does not rely on the runtime: every
 * session is watched; the error, goaway and frameError events close it at once, and the sweep
 * pings any session that received bytes since it last proved alive; no ack in `pingTimeoutMs`
 * (a wedged session cannot ack) destroys it. Idle sessions and streams whose request never
 * completes are closed too.
 */
export function createHttp2SessionGuard(
  deps: Http2SessionGuardDeps,
  options: Http2SessionGuardOptions,
): Http2SessionGuard {
  const sessions = new Map<http2.ServerHttp2Session, Watched>();

  const reap = (session: http2.ServerHttp2Session, w: Watched, reason: ReapReason): void => {
    if (w.reaped) return;
    w.reaped = true;
    deps.guard.reaped(deps.listener, reason);
    sessions.delete(session);
    const destroy = () => {
      if (!session.destroyed) session.destroy();
      // session.destroy() ends the socket gracefully and waits for the peer; a wedged or hostile
      // peer never answers, so the TCP socket goes too.
      w.raw.destroy();
    };
    if (reason === "idle" && !session.closed && !session.destroyed) {
      // Polite close: GOAWAY(NO_ERROR) so the client reconnects without losing a request.
      session.close();
      setTimeout(destroy, options.pingTimeoutMs).unref();
    } else {
      setTimeout(destroy, FLUSH_BEFORE_DESTROY_MS).unref();
    }
  };

  // With no stream open nothing else competes for the socket, so a PING still queued a sweep
  // later was refused by nghttp2: the session has terminated itself and will never ack.
  const pingStuck = (session: http2.ServerHttp2Session, w: Watched): boolean => {
    if (w.openStreams > 0) return false;
    try {
      return session.state.outboundQueueSize !== undefined && session.state.outboundQueueSize > 0;
    } catch {
      return false;
    }
  };

  const sweep = () => {
    const now = Date.now();
    for (const [session, w] of sessions) {
      if (session.destroyed || w.raw.destroyed) {
        sessions.delete(session);
        continue;
      }
      if (w.pingSentAt !== undefined && (now - w.pingSentAt >= options.pingTimeoutMs || pingStuck(session, w))) {
        reap(session, w, "ping-timeout");
        continue;
      }
      const read = w.raw.bytesRead;
      if (read !== w.lastRead) {
        // Still receiving: probe once it goes quiet (a wedged session has stopped reading).
        w.lastRead = read;
        w.probe = true;
        continue;
      }
      if (w.probe && w.pingSentAt === undefined) {
        w.probe = false;
        w.pingSentAt = now;
        try {
          session.ping((err) => {
            if (!err) w.pingSentAt = undefined;
          });
        } catch {
          // ERR_HTTP2_PING_CANCEL / too many pings in flight: the ping timeout decides.
        }
      }
      if (!w.started && now - w.idleSince >= options.headersTimeoutMs) reap(session, w, "headers-timeout");
      else if (w.openStreams === 0 && now - w.idleSince >= options.sessionIdleTimeoutMs) reap(session, w, "idle");
    }
  };
  const timer = setInterval(sweep, options.sweepIntervalMs ?? DEFAULT_SWEEP_MS);
  timer.unref();

  return {
    track(session, raw) {
      const w: Watched = {
        raw,
        openStreams: 0,
        started: false,
        goaway: false,
        idleSince: Date.now(),
        lastRead: -1,
        probe: false,
        pingSentAt: undefined,
        reaped: false,
      };
      sessions.set(session, w);
      session.on("error", () => reap(session, w, "h2-error"));
      session.on("frameError", () => reap(session, w, "h2-frame-error"));
      // A peer's GOAWAY means it will open no new stream; streams in flight may still finish.
      session.on("goaway", () => {
        w.goaway = true;
        if (w.openStreams === 0) reap(session, w, "h2-goaway");
      });
      session.once("close", () => sessions.delete(session));
      session.on("stream", (stream: http2.ServerHttp2Stream) => {
        w.openStreams++;
        w.started = true;
        const timer = setTimeout(() => {
          deps.guard.reaped(deps.listener, "request-timeout");
          stream.close(0x8 /* CANCEL */);
        }, options.requestTimeoutMs);
        timer.unref();
        // Only the request is bounded here: a server stream (a watch) may answer for as long as
        // its deadline allows.
        const requestDone = () => clearTimeout(timer);
        stream.once("end", requestDone);
        stream.once("close", () => {
          requestDone();
          w.openStreams--;
          if (w.openStreams === 0) w.idleSince = Date.now();
          if (w.goaway && w.openStreams === 0) reap(session, w, "h2-goaway");
        });
      });
    },
    size: () => sessions.size,
    close: () => clearInterval(timer),
  };
}
