import * as http from "node:http";
import * as http2 from "node:http2";
import * as net from "node:net";
import type { TLSSocket } from "node:tls";
import { createConnectRouter, createContextValues } from "@connectrpc/connect";
import type { UniversalHandler } from "@connectrpc/connect/protocol";
import {
  compressionBrotli,
  compressionGzip,
  universalRequestFromNodeRequest,
  universalResponseToNodeResponse,
} from "@connectrpc/connect-node";
import type { BoundService } from "./bind-service.js";
import { kPeer, type PeerInfo } from "./interceptor.js";
import type { LimitOptions } from "./limit-options.js";
import { derChainFromPeerCertificate } from "./peer-certificates.js";
import { createConnectionGuard, resolveMaxConnections, type ConnectionGuard } from "./connection-guard.js";
import { createHttp2SessionGuard } from "./http2-session-guard.js";
import { perimeterHeaders, REQUEST_ID_HEADER, requestIdFor } from "./perimeter-headers.js";
import { scrubErrorResponse } from "./scrub-error-response.js";
import type { CredentialGate } from "./credential-gate.js";

type Handler = (
  req: http.IncomingMessage | http2.Http2ServerRequest,
  res: http.ServerResponse | http2.Http2ServerResponse,
) => void;

/** The part of an HTTP/1.1 or HTTP/2 response a plain route uses. */
export interface RouteResponse {
  writeHead(status: number, headers?: Record<string, string>): unknown;
  end(body: string): unknown;
}

/** What a plain route sees of its request: method, URL, headers and the TLS peer. */
export interface RouteRequest {
  method?: string;
  url?: string;
  /** Lower-case header names. @default {} */
  headers?: Record<string, string | string[] | undefined>;
  /** The caller's address and the certificate chain it presented. @default none */
  peer?: PeerInfo;
}

/** A plain HTTP route beside the RPCs (/healthz, /readyz, /metrics). */
export type HttpRoute = (req: RouteRequest, res: RouteResponse) => void;

/** A route that reads the request body and streams its answer itself (the MCP endpoint). */
export type RawHttpRoute = Handler;

/** Options for the Connect / gRPC-Web / gRPC-over-HTTP server. */
export interface HttpServerOptions {
  services: readonly BoundService[];
  /** Exact-path routes served when no RPC matches. */
  routes: Record<string, HttpRoute>;
  /** Exact-path routes given the whole request and response, served when no RPC matches. @default {} */
  rawRoutes?: Record<string, RawHttpRoute>;
  /** Plain paths that stand for an RPC (e.g. "/federation/handshake"): served by that RPC, chain and all. */
  rpcAliases?: Record<string, string>;
  limits: LimitOptions;
  /** TLS options for HTTPS + HTTP/2 via ALPN; plaintext serves HTTP/1.1 and h2c on one port. */
  tls?: http2.SecureServerOptions;
  /** Called with the TLS server so rotating credentials can replace its context. */
  attachTls?: (server: http2.Http2SecureServer) => void;
  /** Connection budget shared with the gRPC port. @default a budget of this server's own, from `limits` */
  guard?: ConnectionGuard;
  /** Refuses calls without any credential before their body is read (see credential-gate.ts). @default admit all */
  credentialGate?: CredentialGate;
}

/** The connect-node server. */
export interface HttpServer {
  listen(host: string, port: number): Promise<number>;
  /** Stops accepting connections; waits up to `graceMs` for open requests, then destroys sockets. */
  shutdown(graceMs: number): Promise<void>;
}

// A TLS connection's peer certificate cannot change; parsing it is costly, so once per socket.
const chainsBySocket = new WeakMap<net.Socket, Uint8Array[]>();

function peerCertificates(socket: net.Socket): Uint8Array[] {
  let chain = chainsBySocket.get(socket);
  if (!chain) {
    chain = readPeerCertificates(socket);
    chainsBySocket.set(socket, chain);
  }
  return chain;
}

function readPeerCertificates(socket: net.Socket): Uint8Array[] {
  const tls = socket as Partial<TLSSocket>;
  return typeof tls.getPeerCertificate === "function" ? derChainFromPeerCertificate(tls.getPeerCertificate(true)) : [];
}

const H2_PREFACE = Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");

// The remote address and port name one TCP connection, whatever socket object (raw, TLS, the
// HTTP/2 session's proxy) a server hands out for it.
const connectionKey = (s: { remoteAddress?: string; remotePort?: number }): string =>
  `${s.remoteAddress ?? ""}|${s.remotePort ?? ""}`;

/** Writes an error in the Connect shape (`{code, message}`), as every non-RPC error of this port is answered. */
function sendConnectError(
  res: http.ServerResponse | http2.Http2ServerResponse,
  status: number,
  code: string,
  message: string,
): void {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  const body = JSON.stringify({ code, message });
  res.writeHead(status, { "content-type": "application/json", "content-length": String(Buffer.byteLength(body)) });
  res.end(body);
}

/**
 * Creates the connect-node server: Connect (JSON and binary), gRPC-Web and gRPC, with explicit
 * limits, a connection budget enforced at accept, a timeout on every stage of a connection
 * (docs/hardening.md) and the perimeter headers on every response.
 */
export function createHttpServer(options: HttpServerOptions): HttpServer {
  const { limits } = options;
  const guard =
    options.guard ??
    createConnectionGuard(
      {},
      {
        maxConnections: resolveMaxConnections(limits.maxConnections),
        maxConnectionsPerIp: limits.maxConnectionsPerIp,
      },
    );
  const router = createConnectRouter({
    // connect-node's default read limit is about 4 GiB: set it.
    readMaxBytes: limits.maxMessageBytes,
    writeMaxBytes: limits.maxMessageBytes,
    acceptCompression: [compressionGzip, compressionBrotli],
    // JSON must be UTF-8 (RFC 8259 §8.1): invalid bytes are INVALID_ARGUMENT, not silently U+FFFD.
    // connect's JSON serialization reads `textDecoder` (serialization.ts) though the router's type omits it.
    jsonOptions: { textDecoder: new TextDecoder("utf-8", { fatal: true }) } as object,
  });
  for (const bound of options.services) router.service(bound.service, bound.impl as never);
  const rpcs = new Map<string, UniversalHandler>(router.handlers.map((h) => [h.requestPath, h]));
  for (const [alias, target] of Object.entries(options.rpcAliases ?? {})) {
    const handler = rpcs.get(target);
    if (handler && !rpcs.has(alias)) rpcs.set(alias, handler);
  }
  const fixedHeaders = perimeterHeaders(options.tls !== undefined);

  const contextValues = (req: http.IncomingMessage | http2.Http2ServerRequest) =>
    createContextValues().set(kPeer, {
      address: `${req.socket.remoteAddress ?? ""}:${req.socket.remotePort ?? ""}`,
      transport: "connect-node",
      certificates: peerCertificates(req.socket),
    });

  const handler: Handler = (req, res) => {
    // One id for the response header, the correlation interceptor and the log, even for answers
    // the chain never sees (404, 405, 415, decode errors).
    const requestId = requestIdFor(req.headers[REQUEST_ID_HEADER]);
    req.headers[REQUEST_ID_HEADER] = requestId;
    for (const [name, value] of fixedHeaders) res.setHeader(name, value);
    res.setHeader(REQUEST_ID_HEADER, requestId);
    const path = (req.url ?? "/").split("?")[0] ?? "/";
    const rpc = rpcs.get(path);
    if (!rpc) {
      const route = options.routes[path];
      if (route)
        return route(
          {
            method: req.method,
            url: req.url,
            headers: req.headers,
            peer: {
              address: `${req.socket.remoteAddress ?? ""}:${req.socket.remotePort ?? ""}`,
              transport: "connect-node",
              certificates: peerCertificates(req.socket),
            },
          },
          res,
        );
      const raw = options.rawRoutes?.[path];
      if (raw) return raw(req, res);
      return sendConnectError(res, 404, "unimplemented", `no route for ${req.method ?? ""} ${path.slice(0, 200)}`);
    }
    const gate = options.credentialGate;
    if (
      gate &&
      !gate({
        method: rpc.method,
        header: (name) => {
          const v = req.headers[name];
          return Array.isArray(v) ? v[0] : v;
        },
        peerCertificate: peerCertificates(req.socket).length > 0,
        peer: `${req.socket.remoteAddress ?? ""}:${req.socket.remotePort ?? ""}`,
        requestId: () => requestId,
      })
    ) {
      // HTTP 401 is UNAUTHENTICATED for Connect, gRPC and gRPC-Web clients alike; the body stays unread.
      return sendConnectError(res, 401, "unauthenticated", "unauthenticated");
    }
    let uReq;
    try {
      uReq = universalRequestFromNodeRequest(req, res, undefined, contextValues(req));
    } catch {
      // An HTTP/1.0 request without Host: connect-node throws here, outside any promise.
      return sendConnectError(res, 400, "invalid_argument", "request: missing Host / :authority");
    }
    const contentType = String(req.headers["content-type"] ?? "");
    rpc(uReq)
      .then((uRes) => scrubErrorResponse(uRes, rpc.method, requestId, contentType))
      .then((uRes) => universalResponseToNodeResponse(uRes, res))
      .catch(() => {
        // The caller went away mid-answer, or the answer could not be written: nothing to tell.
        if (!res.headersSent) sendConnectError(res, 500, "internal", `internal error (request ${requestId})`);
        else res.destroy();
      });
  };

  const h2Settings: http2.Settings = {
    maxConcurrentStreams: limits.maxConcurrentStreams,
    maxHeaderListSize: limits.maxHeaderBytes,
  };
  // Raw TCP sockets, from accept until they close: what shutdown and the reapers destroy.
  const sockets = new Map<string, net.Socket>();
  const sessionGuard = createHttp2SessionGuard(
    { guard, listener: "http" },
    {
      headersTimeoutMs: limits.headersTimeoutMs,
      sessionIdleTimeoutMs: limits.sessionIdleTimeoutMs,
      pingTimeoutMs: limits.pingTimeoutMs,
      requestTimeoutMs: limits.requestTimeoutMs,
    },
  );
  const trackSession = (session: http2.ServerHttp2Session) => {
    const raw = sockets.get(connectionKey(session.socket));
    if (raw) sessionGuard.track(session, raw);
    // Already gone (reset during the handshake). Not in this tick: Node 20 feeds the session its
    // buffered bytes on the next one and throws if the session was destroyed before.
    else setImmediate(() => session.destroy());
  };
  // HTTP/1.1 timeouts (Node's own): headers, whole request, keep-alive idle. Node checks the first
  // two every connectionsCheckingInterval from the moment the server emits 'listening'.
  const h1Timeouts = {
    headersTimeout: limits.headersTimeoutMs,
    requestTimeout: Math.max(limits.requestTimeoutMs, limits.headersTimeoutMs),
    keepAliveTimeout: limits.keepAliveTimeoutMs,
    connectionsCheckingInterval: Math.min(1000, limits.headersTimeoutMs),
  };
  const closers: (() => void)[] = [];
  let dispatch: (socket: net.Socket) => void;

  if (options.tls) {
    const secure = http2.createSecureServer(
      {
        ...options.tls,
        allowHTTP1: true,
        settings: h2Settings,
        maxHeaderListPairs: limits.maxHeaderCount,
        minVersion: "TLSv1.2",
        // Node's default is 120 s: a partial ClientHello would hold a descriptor that long.
        handshakeTimeout: limits.tlsHandshakeTimeoutMs,
      },
      handler,
    );
    Object.assign(secure, h1Timeouts);
    secure.on("session", trackSession);
    // The HTTP/1.1 fallback's timeout checks start on 'listening'; our own net listener accepts.
    secure.emit("listening");
    options.attachTls?.(secure);
    closers.push(() => secure.close());
    dispatch = (socket) => secure.emit("connection", socket);
  } else {
    // Cleartext: HTTP/2 with prior knowledge (gRPC, Connect over h2c) and HTTP/1.1 (curl, browsers)
    // share one port; the first bytes tell them apart (RFC 9113 §3.4 connection preface).
    const h1 = http.createServer({ maxHeaderSize: limits.maxHeaderBytes, ...h1Timeouts }, handler);
    h1.maxHeadersCount = limits.maxHeaderCount;
    h1.emit("listening");
    const h2c = http2.createServer({ settings: h2Settings, maxHeaderListPairs: limits.maxHeaderCount }, handler);
    h2c.on("session", trackSession);
    closers.push(
      () => h1.close(),
      () => h2c.close(),
    );
    dispatch = (socket) => {
      let seen = Buffer.alloc(0);
      // A connection that never says which protocol it speaks is a slowloris: bounded like headers.
      const timer = setTimeout(() => {
        guard.reaped("http", "headers-timeout");
        socket.destroy();
      }, limits.headersTimeoutMs);
      timer.unref();
      socket.once("close", () => clearTimeout(timer));
      const onData = (chunk: Buffer) => {
        seen = Buffer.concat([seen, chunk]);
        const n = Math.min(seen.length, H2_PREFACE.length);
        const isH2 = seen.subarray(0, n).equals(H2_PREFACE.subarray(0, n));
        if (isH2 && seen.length < H2_PREFACE.length) return;
        clearTimeout(timer);
        socket.off("data", onData);
        socket.pause();
        socket.unshift(seen);
        if (isH2) {
          // The HTTP/2 session reads what is already buffered on the next tick; resuming here
          // would emit that data to no listener and lose the preface.
          h2c.emit("connection", socket);
        } else {
          h1.emit("connection", socket);
          socket.resume();
        }
      };
      socket.on("data", onData);
    };
  }

  // The kernel accepts every connection itself: the budget is checked before any TLS or HTTP work.
  const listener = net.createServer((socket) => {
    if (!guard.admit(socket, "http")) return;
    const key = connectionKey(socket);
    sockets.set(key, socket);
    // Until a protocol server owns the socket, a reset must not become an uncaught error.
    socket.on("error", () => undefined);
    socket.once("close", () => sockets.delete(key));
    dispatch(socket);
  });

  return {
    listen: (host, port) =>
      new Promise((resolve, reject) => {
        listener.once("error", reject);
        listener.listen(port, host, () => {
          listener.off("error", reject);
          resolve((listener.address() as net.AddressInfo).port);
        });
      }),
    shutdown: async (graceMs) => {
      const closed = new Promise<void>((resolve) => listener.close(() => resolve()));
      for (const close of closers) close();
      sessionGuard.close();
      const timer = setTimeout(() => {
        for (const socket of sockets.values()) socket.destroy();
      }, graceMs);
      // Idle keep-alive connections would hold close() open until the grace period ends.
      for (const socket of sockets.values()) if (!socket.writableLength) socket.end();
      await closed;
      clearTimeout(timer);
    },
  };
}
