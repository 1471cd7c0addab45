import * as http2 from "node:http2";
import * as net from "node:net";
import * as tls from "node:tls";
import test, { type ExecutionContext } from "ava";
import { AdminService } from "../../gen/nops/kernel/v1/admin_pb.js";
import { waitFor } from "../helpers/processes.js";
import { MALFORMED_H2 } from "./h2-frames.js";
import { spawnKernel, type KernelProcess } from "./kernel-process.js";

// The whole kernel as a process under a low descriptor limit, attacked on both ports. Timeouts are
// shortened (2 s instead of 10 s) to bound the suite's time; the mechanisms are the defaults'.
const NOFILE = 1024;
const LIMITS = {
  HEADERS_TIMEOUT_MS: "2000",
  TLS_HANDSHAKE_TIMEOUT_MS: "2000",
  PING_TIMEOUT_MS: "1500",
  KEEPALIVE_PING_INTERVAL_MS: "2000",
  // Loopback is one address: let the reapers, not only the per-address budget, meet the flood.
  MAX_CONNECTIONS_PER_IP: "1000",
};
// Any attack must be over (every attacking connection closed by the kernel) within this.
const ATTACK_BOUND_MS = 20_000;

interface Attack {
  port: number;
  /** TLS client options (ALPN, certificate) or plaintext when undefined. */
  tls?: tls.ConnectionOptions;
  /** What each connection sends once connected; nothing when undefined. */
  bytes?: Buffer;
}

/**
 * Opens every attack's connections at once and resolves when the kernel has closed all of them
 * (a reset at accept counts: the budget refusing them is a defence too); rejects after the bound.
 */
async function siege(attacks: Attack[], opened: net.Socket[] = []): Promise<void> {
  const closed: Promise<void>[] = [];
  for (const a of attacks) {
    const socket: net.Socket = a.tls
      ? tls.connect({ port: a.port, host: "127.0.0.1", rejectUnauthorized: false, ...a.tls })
      : net.connect(a.port, "127.0.0.1");
    socket.on("error", () => undefined);
    socket.on("data", () => undefined);
    socket.once(a.tls ? "secureConnect" : "connect", () => {
      if (a.bytes) socket.write(a.bytes);
    });
    opened.push(socket);
    closed.push(new Promise((resolve) => socket.once("close", () => resolve())));
  }
  let timer: NodeJS.Timeout | undefined;
  const bound = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      const open = opened.filter((s) => !s.destroyed).length;
      reject(new Error(`${open} of ${attacks.length} attacking connections still open after ${ATTACK_BOUND_MS} ms`));
    }, ATTACK_BOUND_MS);
  });
  try {
    await Promise.race([Promise.all(closed), bound]);
  } finally {
    clearTimeout(timer);
    for (const s of opened) s.destroy();
  }
}

/** After an attack: descriptors back near the baseline, /healthz and authenticated calls on both ports within 1 s. */
async function assertRecovered(t: ExecutionContext, k: KernelProcess, baseline: number, what: string): Promise<void> {
  await waitFor(
    () => k.fds() <= baseline + 10,
    `${what}: descriptors back near ${baseline} (now ${k.fds()})`,
    10_000,
    100,
  );
  for (const port of ["grpc", "http"] as const) {
    const started = performance.now();
    const status = await k.client(AdminService, port).getStatus({}, { timeoutMs: 1000 });
    t.truthy(status.version, `${what}: GetStatus on the ${port} port`);
    t.true(performance.now() - started < 1000, `${what}: GetStatus on the ${port} port within 1 s`);
  }
  const started = performance.now();
  t.is(await k.healthz(), 200, `${what}: /healthz`);
  t.true(performance.now() - started < 1000, `${what}: /healthz within 1 s`);
  t.log(
    `${what}: ${k.fds()} descriptors (baseline ${baseline}), recovered at ${Math.round(performance.now() - k.startedAt)} ms`,
  );
}

// A ClientHello cut short: a TLS record header promising 512 bytes, then 20 of them.
const PARTIAL_CLIENT_HELLO = Buffer.concat([Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00]), Buffer.alloc(20, 1)]);
const PARTIAL_H1 = Buffer.from("POST /nops.kernel.v1.AdminService/GetStatus HTTP/1.1\r\nHost: localhost\r\nX-a: ");
const PARTIAL_PREFACE = Buffer.from("PRI * HTTP/2.0\r\n");

for (const mode of ["plaintext", "mtls"] as const) {
  test.serial(
    `abuse - ${mode}: malformed HTTP/2, rapid reset and slowloris floods leave the kernel serving with its descriptors back`,
    async (t) => {
      const k = await spawnKernel(t, { tls: mode === "mtls", nofile: NOFILE, limits: LIMITS });
      // Warm up (lazy descriptors such as the client connections the kernel opens) before the baseline.
      for (const port of ["grpc", "http"] as const) await k.client(AdminService, port).getStatus({});
      t.is(await k.healthz(), 200);
      const baseline = k.fds();
      t.log(`${mode}: baseline ${baseline} descriptors, limit ${NOFILE}`);

      // The HTTP port needs no client certificate; the gRPC port requires one: the flood there comes
      // from a holder of a valid SVID.
      const h2 = (port: number, withCert: boolean): tls.ConnectionOptions | undefined =>
        k.tls ? { ALPNProtocols: ["h2"], ...(withCert ? { cert: k.tls.cert, key: k.tls.key } : {}) } : undefined;

      // Item 1: 1,000 connections that each end in an HTTP/2 connection error.
      const kinds = Object.values(MALFORMED_H2);
      const malformed: Attack[] = [];
      for (let i = 0; i < 1000; i++) {
        const grpc = i % 5 === 0;
        const port = grpc ? k.grpcPort : k.httpPort;
        malformed.push({ port, tls: h2(port, grpc), bytes: kinds[i % kinds.length] });
      }
      await siege(malformed);
      await assertRecovered(t, k, baseline, `${mode} malformed HTTP/2`);

      // Rapid reset (CVE-2023-44487): HEADERS then RST_STREAM until the kernel sends GOAWAY.
      const resetters = await Promise.all(
        Array.from({ length: 4 }, async () => {
          const c = http2.connect(`${k.tls ? "https" : "http"}://localhost:${k.httpPort}`, { ca: k.tls?.ca });
          c.on("error", () => undefined);
          const goaway = new Promise<void>((resolve) => {
            c.once("goaway", () => resolve());
            c.once("close", () => resolve());
          });
          await new Promise((resolve) => c.once("connect", resolve));
          for (let i = 0; i < 4000 && !c.closed && !c.destroyed; i++) {
            const req = c.request({ ":path": "/nops.kernel.v1.AdminService/GetStatus", ":method": "POST" });
            req.on("error", () => undefined);
            req.close(http2.constants.NGHTTP2_CANCEL);
            if (i % 200 === 0) await new Promise((r) => setImmediate(r));
          }
          // Bounded: a kernel that never sends GOAWAY fails below, it does not hang the suite.
          await Promise.race([goaway, new Promise((r) => setTimeout(r, ATTACK_BOUND_MS).unref())]);
          t.true(c.closed || c.destroyed, "the kernel ended the resetting connection");
          return c;
        }),
      );
      for (const c of resetters) c.destroy();
      await assertRecovered(t, k, baseline, `${mode} rapid reset`);

      // Item 3: 2,000 partial connections, slowloris style, on both ports; some trickle a byte a second.
      const partial: Attack[] = [];
      for (let i = 0; i < 2000; i++) {
        const grpc = i % 4 === 0;
        const port = grpc ? k.grpcPort : k.httpPort;
        if (k.tls) {
          // Most stop inside the ClientHello; a quarter finish TLS (no certificate) and never send a request.
          partial.push(
            i % 4 === 1 ? { port, tls: { ALPNProtocols: ["http/1.1"] } } : { port, bytes: PARTIAL_CLIENT_HELLO },
          );
        } else {
          partial.push({ port, bytes: grpc ? PARTIAL_PREFACE : PARTIAL_H1 });
        }
      }
      const sockets: net.Socket[] = [];
      const trickle = setInterval(() => {
        for (let i = 0; i < sockets.length; i += 10) if (!sockets[i]!.destroyed) sockets[i]!.write("a");
      }, 1000);
      try {
        await siege(partial, sockets);
      } finally {
        clearInterval(trickle);
      }
      await assertRecovered(t, k, baseline, `${mode} slowloris`);
    },
  );
}
