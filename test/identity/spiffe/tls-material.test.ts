import test from "ava";
import * as grpc from "@grpc/grpc-js";
import http2 from "node:http2";
import type { Socket } from "node:net";
import https from "node:https";
import { connect as tlsConnect, type ConnectionOptions, type TLSSocket } from "node:tls";
import { systemClock } from "../../../src/common/clock.js";
import { createSilentLogger } from "../../../src/telemetry/logger.js";
import { createTlsMaterial, type TlsMaterial } from "../../../src/identity/spiffe/tls-material.js";
import { PeerVerificationError } from "../../../src/identity/spiffe/verify-peer.js";
import { derChainFromPeerCertificate } from "../../../src/server/peer-certificates.js";
import { createWorkloadX509Source } from "../../../src/identity/spiffe/workload-api-client.js";
import type { X509Source } from "../../../src/identity/spiffe/x509-source.js";
import { createTestCa, type TestCa, type TestSvid } from "../../helpers/test-ca.js";
import { startWorkloadApiDouble, type WorkloadApiDouble } from "../../helpers/workload-api-double.js";
import { contextOf, createStaticSource, createTestMeter, waitFor } from "./support.js";

const KERNEL_ID = "spiffe://nops.test/nops/kernel/edge-1";
const TESTER_ID = "spiffe://nops.test/nops/admin/tester";
const PARTNER_ID = "spiffe://partner.test/nops/admin/partner";
const raw = (b: Buffer): Buffer => b;
const logger = createSilentLogger();

interface Fixture {
  ca: TestCa;
  partner: TestCa;
  double: WorkloadApiDouble;
  source: X509Source;
  material: TlsMaterial;
  clientMaterial: (svid: TestSvid, trusted: TestCa[]) => TlsMaterial;
  serverSvid: () => Promise<TestSvid>;
  rotate: (federated?: Record<string, Uint8Array>) => Promise<TestSvid>;
}

async function fixture(t: { teardown(fn: () => Promise<void> | void): void }): Promise<Fixture> {
  const ca = await createTestCa("nops.test");
  const partner = await createTestCa("partner.test");
  const double = await startWorkloadApiDouble();
  const serverSvid = () => ca.issue({ spiffeId: KERNEL_ID, dnsNames: ["localhost"], ipAddresses: ["127.0.0.1"] });
  double.issue({ spiffeId: KERNEL_ID, svid: await serverSvid(), bundle: ca.certDer });
  const source = createWorkloadX509Source(
    { logger, clock: systemClock, meter: createTestMeter().meter },
    { socket: double.address, initialBackoffMs: 10, maxBackoffMs: 100 },
  );
  await source.ready();
  const material = createTlsMaterial({ source, clock: systemClock, logger });
  t.teardown(async () => {
    material.close();
    await source.close();
    await double.close();
  });
  return {
    ca,
    partner,
    double,
    source,
    material,
    clientMaterial: (svid, trusted) =>
      createTlsMaterial({ source: createStaticSource(contextOf(svid, trusted)), clock: systemClock, logger }),
    serverSvid,
    async rotate(federated) {
      const next = await serverSvid();
      double.issue({
        spiffeId: KERNEL_ID,
        svid: next,
        bundle: ca.certDer,
        ...(federated ? { federatedBundles: federated } : {}),
      });
      await waitFor(
        () => Buffer.from(source.current()!.svid.certificates[0]!).equals(Buffer.from(next.certificates[0]!)),
        "rotation",
      );
      return next;
    },
  };
}

/** Listens on a free loopback port; teardown destroys every connection so the worker can exit. */
async function listen(t: { teardown(fn: () => void): void }, server: http2.Http2SecureServer): Promise<number> {
  const sockets = new Set<Socket>();
  server.on("connection", (socket: Socket) => {
    sockets.add(socket);
    socket.once("close", () => sockets.delete(socket));
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  t.teardown(() => {
    server.close();
    for (const socket of sockets) socket.destroy();
  });
  return (server.address() as { port: number }).port;
}

/** The leaf a fresh TLS handshake sees (with or without SNI). */
async function presentedLeaf(port: number, client: TlsMaterial, servername?: string): Promise<Buffer> {
  const options: ConnectionOptions = {
    ...client.clientOptions(),
    host: "127.0.0.1",
    port,
    ALPNProtocols: ["h2"],
    ...(servername ? { servername } : {}),
  };
  return new Promise((resolve, reject) => {
    const socket: TLSSocket = tlsConnect(options, () => {
      const leaf = socket.getPeerCertificate().raw;
      socket.destroy();
      resolve(leaf);
    });
    socket.once("error", reject);
  });
}

/** Runs `call` continuously with a few concurrent workers until `stop` resolves; returns counts. */
async function traffic(call: () => Promise<void>, stop: Promise<void>): Promise<{ ok: number; failed: unknown[] }> {
  let stopped = false;
  void stop.then(() => {
    stopped = true;
  });
  const result = { ok: 0, failed: [] as unknown[] };
  const worker = async () => {
    while (!stopped) {
      try {
        await call();
        result.ok += 1;
      } catch (err) {
        result.failed.push(err);
      }
    }
  };
  await Promise.all([worker(), worker(), worker(), worker()]);
  return result;
}

test("tls material - grpc-js server rotates with zero failed calls and new handshakes see the new SVID", async (t) => {
  const f = await fixture(t);
  const peers = new Set<string>();
  const callers = new Set<string>();
  let release!: () => void;
  const held = new Promise<void>((r) => (release = r));
  const server = new grpc.Server();
  server.addService(
    {
      Echo: {
        path: "/test.Echo/Echo",
        requestStream: false,
        responseStream: false,
        requestSerialize: raw,
        requestDeserialize: raw,
        responseSerialize: raw,
        responseDeserialize: raw,
      },
    },
    {
      Echo: (call: grpc.ServerUnaryCall<Buffer, Buffer>, cb: grpc.sendUnaryData<Buffer>) => {
        const cert = call.getAuthContext().sslPeerCertificate;
        try {
          callers.add(f.material.verifyPeer(cert ? [new Uint8Array(cert.raw)] : []).spiffeId);
        } catch (err) {
          cb({ code: grpc.status.UNAUTHENTICATED, details: (err as PeerVerificationError).reason });
          return;
        }
        peers.add(call.getPeer());
        if (call.request.toString() === "hold") void held.then(() => cb(null, call.request));
        else cb(null, call.request);
      },
    },
  );
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync("127.0.0.1:0", f.material.grpcServerCredentials(), (err, p) => (err ? reject(err) : resolve(p))),
  );
  t.teardown(() => server.forceShutdown());

  const tester = f.clientMaterial(await f.ca.issue({ spiffeId: TESTER_ID }), [f.ca]);
  const newClient = (m: TlsMaterial) => {
    const c = new grpc.Client(`127.0.0.1:${port}`, m.grpcChannelCredentials({ allowedIds: [KERNEL_ID] }));
    t.teardown(() => c.close());
    return c;
  };
  const echo = (c: grpc.Client, body: string) =>
    new Promise<string>((resolve, reject) =>
      c.makeUnaryRequest(
        "/test.Echo/Echo",
        raw,
        raw,
        Buffer.from(body),
        new grpc.Metadata(),
        { deadline: Date.now() + 20_000 },
        (err, res) => (err ? reject(err) : resolve(res!.toString())),
      ),
    );

  const client = newClient(tester);
  t.is(await echo(client, "hi"), "hi");
  const inFlight = echo(client, "hold");
  let stopTraffic!: () => void;
  const running = traffic(() => echo(client, "x").then(() => undefined), new Promise<void>((r) => (stopTraffic = r)));
  await waitFor(() => peers.size === 1, "traffic on the connection");

  const rotated = await f.rotate();
  t.true(
    (await presentedLeaf(port, tester)).equals(Buffer.from(rotated.certificates[0]!)),
    "new handshake presents the new SVID",
  );
  t.is(await echo(newClient(tester), "after"), "after");

  release();
  t.is(await inFlight, "hold", "the in-flight call finishes on the old connection");
  stopTraffic();
  const counts = await running;
  t.deepEqual(counts.failed, []);
  t.true(counts.ok > 0);
  t.deepEqual([...callers], [TESTER_ID]);

  // A partner from another trust domain is refused at the TLS layer until its bundle arrives.
  const partnerClient = f.clientMaterial(await f.partner.issue({ spiffeId: PARTNER_ID }), [f.ca, f.partner]);
  await t.throwsAsync(echo(newClient(partnerClient), "p"), { message: /UNAVAILABLE/ });
  await f.rotate({ "spiffe://partner.test": f.partner.certDer });
  t.is(await echo(newClient(partnerClient), "p"), "p");
  t.true(callers.has(PARTNER_ID));

  // The partner CA is now trusted at the TLS layer, but it cannot vouch for nops.test IDs.
  const impostor = f.clientMaterial(await f.partner.issue({ spiffeId: "spiffe://nops.test/nops/admin/root" }), [f.ca]);
  await t.throwsAsync(echo(newClient(impostor), "i"), { message: /UNAUTHENTICATED.*untrusted/ });
});

test("tls material - node:http2 secure server rotates without dropping the open session", async (t) => {
  const f = await fixture(t);
  const sessions = new Set<unknown>();
  let release!: () => void;
  const held = new Promise<void>((r) => (release = r));
  const server = http2.createSecureServer({ ...f.material.serverOptions(), allowHTTP1: true }, (req, res) => {
    const socket = req.socket as TLSSocket;
    sessions.add(socket);
    let id: string;
    try {
      id = f.material.verifyPeer(derChainFromPeerCertificate(socket.getPeerCertificate(true))).spiffeId;
    } catch (err) {
      res.writeHead(403).end((err as PeerVerificationError).reason);
      return;
    }
    if (req.url === "/hold") void held.then(() => res.end(`held ${id}`));
    else res.end(id);
  });
  const detach = f.material.attachServer(server);
  t.teardown(detach);
  const port = await listen(t, server);

  const tester = f.clientMaterial(await f.ca.issue({ spiffeId: TESTER_ID }), [f.ca]);
  const session = http2.connect(`https://127.0.0.1:${port}`, tester.clientOptions({ allowedIds: [KERNEL_ID] }));
  t.teardown(() => session.destroy());
  const get = (path: string) =>
    new Promise<string>((resolve, reject) => {
      const req = session.request({ ":path": path });
      let body = "";
      req.setEncoding("utf8");
      req.on("response", (h) => {
        if (h[":status"] !== 200) reject(new Error(`status ${h[":status"]}`));
      });
      req.on("data", (c: string) => (body += c));
      req.on("end", () => resolve(body));
      req.on("error", reject);
      req.end();
    });

  t.is(await get("/"), TESTER_ID);
  const inFlight = get("/hold");
  let stopTraffic!: () => void;
  const running = traffic(() => get("/").then(() => undefined), new Promise<void>((r) => (stopTraffic = r)));

  const rotated = await f.rotate();
  const leaf = Buffer.from(rotated.certificates[0]!);
  t.true((await presentedLeaf(port, tester)).equals(leaf), "without SNI (setSecureContext)");
  t.true((await presentedLeaf(port, tester, "localhost")).equals(leaf), "with SNI (SNICallback)");

  // HTTP/1.1 on the same server (allowHTTP1), a fresh connection with hostname checks like curl.
  const h1 = await new Promise<string>((resolve, reject) => {
    const req = https.request(
      {
        host: "127.0.0.1",
        port,
        path: "/",
        servername: "localhost",
        ca: f.ca.certPem,
        cert: rotated.certPem,
        key: rotated.keyPem,
        agent: false,
      },
      (res) => {
        let body = "";
        res.setEncoding("utf8");
        res.on("data", (c: string) => (body += c));
        res.on("end", () => resolve(body));
      },
    );
    req.on("error", reject);
    req.end();
  });
  t.is(h1, KERNEL_ID);

  release();
  t.is(await inFlight, `held ${TESTER_ID}`);
  stopTraffic();
  const counts = await running;
  t.deepEqual(counts.failed, []);
  t.true(counts.ok > 0);
  t.false(session.closed || session.destroyed, "the open session survived the rotation");
});

test("tls material - client without a certificate is refused and TLS below 1.2 is refused", async (t) => {
  const f = await fixture(t);
  const server = http2.createSecureServer(f.material.serverOptions(), (_req, res) => res.end("ok"));
  f.material.attachServer(server);
  const port = await listen(t, server);
  const attempt = (options: ConnectionOptions) =>
    new Promise<void>((resolve, reject) => {
      const socket = tlsConnect({
        host: "127.0.0.1",
        port,
        ca: f.ca.certPem,
        checkServerIdentity: () => undefined,
        ALPNProtocols: ["h2"],
        ...options,
      });
      socket.once("secureConnect", () => {
        // TLS 1.3 reports a missing client certificate after the handshake: wait for the alert.
        socket.once("data", () => {
          socket.destroy();
          resolve();
        });
        socket.write("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
      });
      socket.once("error", reject);
      socket.once("close", () => reject(new Error("closed")));
    });
  await t.throwsAsync(attempt({}));
  const svid = await f.ca.issue({ spiffeId: TESTER_ID });
  // SECLEVEL=0 lets this client really offer TLS 1.1, so the refusal comes from the server's floor.
  await t.throwsAsync(
    attempt({
      cert: svid.certPem,
      key: svid.keyPem,
      maxVersion: "TLSv1.1",
      minVersion: "TLSv1",
      ciphers: "DEFAULT@SECLEVEL=0",
    }),
    { message: /protocol version|unsupported protocol/i },
  );
  await t.notThrowsAsync(attempt({ cert: svid.certPem, key: svid.keyPem }));
});

test("tls material - an outbound client rejects a server outside the expected identities", async (t) => {
  const f = await fixture(t);
  const server = http2.createSecureServer(f.material.serverOptions(), (_req, res) => res.end("ok"));
  f.material.attachServer(server);
  const port = await listen(t, server);
  const tester = f.clientMaterial(await f.ca.issue({ spiffeId: TESTER_ID }), [f.ca]);
  const connect = (allowedIds: string[]) =>
    new Promise<void>((resolve, reject) => {
      const s = tlsConnect(
        { ...tester.clientOptions({ allowedIds }), host: "127.0.0.1", port, ALPNProtocols: ["h2"] },
        () => {
          s.destroy();
          resolve();
        },
      );
      s.once("error", reject);
    });
  await t.notThrowsAsync(connect([KERNEL_ID]));
  const err = await t.throwsAsync(connect(["spiffe://nops.test/nops/kernel/other"]));
  t.true(err instanceof PeerVerificationError && err.reason === "unexpected-id");
});
