import * as http from "node:http";
import * as http2 from "node:http2";
import * as net from "node:net";
import type { TLSSocket } from "node:tls";
import { createContextValues } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import type { BoundService } from "./bind-service.js";
import { kPeer } from "./interceptor.js";
import type { LimitOptions } from "./limit-options.js";
import { derChainFromPeerCertificate } from "./peer-certificates.js";

type Handler = (
  req: http.IncomingMessage | http2.Http2ServerRequest,
  res: http.ServerResponse | http2.Http2ServerResponse,
) => void;

/** The part of an HTTP/1.1 or HTTP/2 response a plain route uses. */
export interface RouteResponse {
  writeHead(status: number, headers?: Record<string, string>): unknown;
  end(body: string): unknown;
}

/** A plain HTTP route beside the RPCs (/healthz, /readyz, /metrics). */
export type HttpRoute = (req: { method?: string; url?: string }, res: RouteResponse) => void;

/** Options for the Connect / gRPC-Web / gRPC-over-HTTP server. */
export interface HttpServerOptions {
  services: readonly BoundService[];
  /** Exact-path routes served when no RPC matches. */
  routes: Record<string, HttpRoute>;
  limits: LimitOptions;
  /** TLS options for HTTPS + HTTP/2 via ALPN; plaintext serves HTTP/1.1 and h2c on one port. */
  tls?: http2.SecureServerOptions;
  /** Called with the TLS server so rotating credentials can replace its context. */
  attachTls?: (server: http2.Http2SecureServer) => void;
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

/** Creates the connect-node server: Connect (JSON and binary), gRPC-Web and gRPC, with explicit limits. */
export function createHttpServer(options: HttpServerOptions): HttpServer {
  const { limits } = options;
  const rpc = connectNodeAdapter({
    routes: (router) => {
      for (const bound of options.services) router.service(bound.service, bound.impl as never);
    },
    // connect-node's default read limit is about 4 GiB: set it.
    readMaxBytes: limits.maxMessageBytes,
    writeMaxBytes: limits.maxMessageBytes,
    contextValues: (req) =>
      createContextValues().set(kPeer, {
        address: `${req.socket.remoteAddress ?? ""}:${req.socket.remotePort ?? ""}`,
        transport: "connect-node",
        certificates: peerCertificates(req.socket),
      }),
    fallback: (req, res) => {
      const path = (req.url ?? "/").split("?")[0] ?? "/";
      const route = options.routes[path];
      if (route) return route(req, res);
      res.writeHead(404, { "content-type": "application/json" });
      res.end(JSON.stringify({ error: `no route for ${req.method} ${path}` }));
    },
  });
  const handler: Handler = (req, res) => rpc(req, res);

  const h2Settings: http2.Settings = {
    maxConcurrentStreams: limits.maxConcurrentStreams,
    maxHeaderListSize: limits.maxHeaderBytes,
  };
  const sockets = new Set<net.Socket>();
  let listener: net.Server;
  const servers: { close(): void }[] = [];

  if (options.tls) {
    const secure = http2.createSecureServer(
      {
        ...options.tls,
        allowHTTP1: true,
        settings: h2Settings,
        maxHeaderListPairs: limits.maxHeaderCount,
        minVersion: "TLSv1.2",
      },
      handler,
    );
    options.attachTls?.(secure);
    listener = secure;
  } else {
    // Cleartext: HTTP/2 with prior knowledge (gRPC, Connect over h2c) and HTTP/1.1 (curl, browsers)
    // share one port; the first bytes tell them apart (RFC 9113 §3.4 connection preface).
    const h1 = http.createServer({ maxHeaderSize: limits.maxHeaderBytes }, handler);
    h1.maxHeadersCount = limits.maxHeaderCount;
    const h2c = http2.createServer({ settings: h2Settings, maxHeaderListPairs: limits.maxHeaderCount }, handler);
    servers.push(h1, h2c);
    listener = net.createServer((socket) => {
      let seen = Buffer.alloc(0);
      const onData = (chunk: Buffer) => {
        seen = Buffer.concat([seen, chunk]);
        const n = Math.min(seen.length, H2_PREFACE.length);
        const isH2 = seen.subarray(0, n).equals(H2_PREFACE.subarray(0, n));
        if (isH2 && seen.length < H2_PREFACE.length) return;
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
    });
  }
  listener.on("connection", (socket: net.Socket) => {
    sockets.add(socket);
    socket.once("close", () => sockets.delete(socket));
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
      for (const s of servers) s.close();
      const timer = setTimeout(() => {
        for (const socket of sockets) socket.destroy();
      }, graceMs);
      // Idle keep-alive connections would hold close() open until the grace period ends.
      for (const socket of sockets) if (!socket.writableLength) socket.end();
      await closed;
      clearTimeout(timer);
    },
  };
}
