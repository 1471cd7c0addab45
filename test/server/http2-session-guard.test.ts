import * as http2 from "node:http2";
import * as net from "node:net";
import * as tls from "node:tls";
import test, { type ExecutionContext } from "ava";
import { Health, HealthCheckResponse_ServingStatus as Serving } from "../../gen/grpc/health/v1/health_pb.js";
import { DEFAULT_KERNEL_OPTIONS } from "../../src/kernel/kernel-options.js";
import type { LimitOptions } from "../../src/server/limit-options.js";
import { bindService } from "../../src/server/bind-service.js";
import { createConnectionGuard, type ConnectionGuard } from "../../src/server/connection-guard.js";
import { createHttpServer } from "../../src/server/http-server.js";
import { createTestCa } from "../helpers/test-ca.js";
import { waitFor } from "../helpers/processes.js";
import { frame, H2_PREFACE, MALFORMED_H2 } from "../abuse/h2-frames.js";

const limits: LimitOptions = { ...DEFAULT_KERNEL_OPTIONS.limits, maxConnectionsPerIp: 10_000 };

async function startServer(
  t: { teardown(fn: () => Promise<void> | void): void },
  withTls: boolean,
): Promise<{ port: number; guard: ConnectionGuard; ca?: string }> {
  const bound = bindService(Health, { check: () => ({ status: Serving.SERVING }), async *watch() {} }, []);
  const guard = createConnectionGuard({}, { maxConnections: 100_000, maxConnectionsPerIp: 100_000 });
  let tlsOptions: http2.SecureServerOptions | undefined;
  let ca: string | undefined;
  if (withTls) {
    const testCa = await createTestCa("perimeter.test");
    const svid = await testCa.issue({ spiffeId: "spiffe://perimeter.test/kernel", dnsNames: ["localhost"] });
    tlsOptions = {
      cert: svid.certPem,
      key: svid.keyPem,
      ca: testCa.certPem,
      requestCert: true,
      rejectUnauthorized: false,
    };
    ca = testCa.certPem;
  }
  const server = createHttpServer({ services: [bound], routes: {}, limits, tls: tlsOptions, guard });
  const port = await server.listen("127.0.0.1", 0);
  t.teardown(() => server.shutdown(100));
  return { port, guard, ca };
}

// Opens `n` connections that each send `bytes` (after TLS when `ca` is set), and resolves once the
// server has closed every one of them; rejects after `timeoutMs`.
async function flood(port: number, bytes: Buffer, n: number, ca: string | undefined): Promise<void> {
  const closed: Promise<void>[] = [];
  for (let i = 0; i < n; i++) {
    const socket = ca
      ? tls.connect({ port, host: "127.0.0.1", ca, ALPNProtocols: ["h2"], rejectUnauthorized: false })
      : net.connect(port, "127.0.0.1");
    socket.on("error", () => undefined);
    socket.on("data", () => undefined);
    socket.once(ca ? "secureConnect" : "connect", () => socket.write(bytes));
    closed.push(new Promise((resolve) => socket.once("close", () => resolve())));
  }
  await Promise.all(closed);
}

for (const mode of ["plaintext", "tls"] as const) {
  // Node 20 answers these with a GOAWAY from nghttp2 and then leaves the socket open for good.
  test.serial(
    `http2 session guard - ${mode}: every connection that sends a malformed frame is closed and counted`,
    async (t) => {
      const { port, guard, ca } = await startServer(t, mode === "tls");
      const n = 40;
      const kinds = Object.entries(MALFORMED_H2);
      const timeout = new Promise((_, reject) =>
        setTimeout(() => reject(new Error("server kept connections open")), 15_000).unref(),
      );
      await Promise.race([Promise.all(kinds.map(([, bytes]) => flood(port, bytes, n, ca))), timeout]);
      await waitFor(() => guard.stats().open === 0, "every connection released", 5000);
      t.true(guard.stats().reaped >= n * kinds.length, `reaped ${guard.stats().reaped} of ${n * kinds.length}`);
    },
  );
}

test.serial("http2 session guard - a rapid-reset client is cut off and its connection released", async (t) => {
  const { port, guard } = await startServer(t, false);
  const client = http2.connect(`http://127.0.0.1:${port}`);
  client.on("error", () => undefined);
  await new Promise((resolve) => client.once("connect", resolve));
  const goaway = new Promise<number>((resolve) => client.once("goaway", (code: number) => resolve(code)));
  // Bounded: Node's mitigation answers within about a thousand resets.
  for (let i = 0; i < 5000 && !client.closed && !client.destroyed; i++) {
    const req = client.request({ ":path": "/grpc.health.v1.Health/Check", ":method": "POST" });
    req.on("error", () => undefined);
    req.close(http2.constants.NGHTTP2_CANCEL);
    if (i % 100 === 0) await new Promise((r) => setImmediate(r));
  }
  t.not(await goaway, 0);
  client.destroy();
  await waitFor(() => guard.stats().open === 0, "the server side of the connection closes", 10_000);
  t.true(guard.stats().reaped >= 1);
});

test.serial(
  "http2 session guard - a connection that sends only the preface is closed after headersTimeoutMs",
  async (t) => {
    const bound = bindService(Health, { check: () => ({ status: Serving.SERVING }), async *watch() {} }, []);
    const guard = createConnectionGuard({}, { maxConnections: 100, maxConnectionsPerIp: 100 });
    const server = createHttpServer({
      services: [bound],
      routes: {},
      limits: { ...limits, headersTimeoutMs: 300 },
      guard,
    });
    const port = await server.listen("127.0.0.1", 0);
    t.teardown(() => server.shutdown(100));
    const socket = net.connect(port, "127.0.0.1");
    socket.on("error", () => undefined);
    socket.on("data", () => undefined);
    socket.write(Buffer.concat([H2_PREFACE, frame(4, 0, 0, Buffer.alloc(0))]));
    const started = Date.now();
    await new Promise((resolve) => socket.once("close", resolve));
    t.true(Date.now() - started < 3000);
    t.is(guard.stats().reaped, 1);
  },
);

async function serverWith(t: ExecutionContext, overrides: Partial<LimitOptions>) {
  const bound = bindService(Health, { check: () => ({ status: Serving.SERVING }), async *watch() {} }, []);
  const guard = createConnectionGuard({}, { maxConnections: 100, maxConnectionsPerIp: 100 });
  const server = createHttpServer({ services: [bound], routes: {}, limits: { ...limits, ...overrides }, guard });
  const port = await server.listen("127.0.0.1", 0);
  t.teardown(() => server.shutdown(100));
  const client = http2.connect(`http://127.0.0.1:${port}`);
  client.on("error", () => undefined);
  t.teardown(() => void client.destroy());
  return { guard, client };
}

test.serial(
  "http2 session guard - a stream that never sends its request body is reset after requestTimeoutMs",
  async (t) => {
    const { client } = await serverWith(t, { requestTimeoutMs: 300 });
    const stream = client.request({
      ":method": "POST",
      ":path": "/grpc.health.v1.Health/Check",
      "content-type": "application/json",
    });
    stream.on("error", () => undefined);
    stream.resume();
    const started = Date.now();
    await new Promise((resolve) => stream.once("close", resolve));
    t.is(stream.rstCode, http2.constants.NGHTTP2_CANCEL);
    t.true(Date.now() - started < 3000);
    // The connection itself is fine: a complete request on it is answered.
    const ok = client.request({
      ":method": "POST",
      ":path": "/grpc.health.v1.Health/Check",
      "content-type": "application/json",
    });
    const status = new Promise((resolve) => ok.once("response", (h) => resolve(h[":status"])));
    ok.resume();
    ok.end("{}");
    t.is(await status, 200);
  },
);

test.serial(
  "http2 session guard - a connection with no open stream for sessionIdleTimeoutMs gets GOAWAY and is closed",
  async (t) => {
    const { client, guard } = await serverWith(t, { sessionIdleTimeoutMs: 500 });
    const req = client.request({
      ":method": "POST",
      ":path": "/grpc.health.v1.Health/Check",
      "content-type": "application/json",
    });
    req.resume();
    req.end("{}");
    await new Promise((resolve) => req.once("close", resolve));
    const goaway = new Promise<number>((resolve) => client.once("goaway", (code: number) => resolve(code)));
    t.is(await goaway, http2.constants.NGHTTP2_NO_ERROR, "a polite GOAWAY");
    await waitFor(() => guard.stats().open === 0, "connection closed", 5000);
    t.is(guard.stats().reaped, 1);
  },
);
