import test from "ava";
import http2 from "node:http2";
import https from "node:https";
import type { Socket } from "node:net";
import type { TLSSocket } from "node:tls";
import { mkdtemp, readFile, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createManualClock, systemClock, type Clock } from "../../../src/common/clock.js";
import { ConfigError } from "../../../src/common/errors.js";
import { createLogger, createSilentLogger } from "../../../src/telemetry/logger.js";
import {
  createDevX509Source,
  DEV_IDENTITY_FILES,
  resolveDevX509SourceOptions,
} from "../../../src/identity/spiffe/dev-issuer.js";
import { createTlsMaterial } from "../../../src/identity/spiffe/tls-material.js";
import { derChainFromPeerCertificate } from "../../../src/server/peer-certificates.js";
import type { X509Context } from "../../../src/identity/spiffe/x509-source.js";
import { waitFor } from "./support.js";

const KERNEL_ID = "spiffe://nops.local/nops/kernel/edge-1";
const DAY = 24 * 3600_000;

async function tempDir(t: { teardown(fn: () => Promise<void>): void }): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), "nops-dev-identity-"));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  return join(dir, "dev-identity");
}

const files = async (dir: string) =>
  Object.fromEntries(
    await Promise.all(
      Object.entries(DEV_IDENTITY_FILES).map(async ([k, f]) => [k, await readFile(join(dir, f), "utf8")] as const),
    ),
  );

async function open(dir: string, clock: Clock = systemClock, extra = {}) {
  return createDevX509Source({ logger: createSilentLogger(), clock }, { dir, spiffeId: KERNEL_ID, ...extra });
}

test("dev issuer - writes client files that work like curl against a server built from it", async (t) => {
  const dir = await tempDir(t);
  const lines: string[] = [];
  const source = await createDevX509Source(
    {
      logger: createLogger({ level: "warn", redactPaths: [] }, { write: (l: string) => void lines.push(l) }),
      clock: systemClock,
    },
    { dir, spiffeId: KERNEL_ID },
  );
  t.teardown(() => source.close());
  t.true(lines.some((l) => l.includes('"level":"warn"') && l.includes("DEVELOPMENT identity")));
  t.is((await stat(join(dir, "svid.key"))).mode & 0o777, 0o600);
  t.is((await stat(join(dir, "ca.key"))).mode & 0o777, 0o600);

  const material = createTlsMaterial({ source, clock: systemClock, logger: createSilentLogger() });
  const server = http2.createSecureServer({ ...material.serverOptions(), allowHTTP1: true }, (req, res) => {
    const chain = derChainFromPeerCertificate((req.socket as TLSSocket).getPeerCertificate(true));
    res.end(material.verifyPeer(chain).spiffeId);
  });
  material.attachServer(server);
  const sockets = new Set<Socket>();
  server.on("connection", (s: Socket) => sockets.add(s));
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  t.teardown(() => {
    server.close();
    for (const s of sockets) s.destroy();
  });
  const port = (server.address() as { port: number }).port;

  const f = await files(dir);
  // Node's default hostname check, as curl does: DNS SAN localhost and IP SAN 127.0.0.1.
  for (const servername of ["localhost", undefined]) {
    const body = await new Promise<string>((resolve, reject) => {
      const req = https.request(
        {
          host: "127.0.0.1",
          port,
          path: "/",
          ...(servername ? { servername } : {}),
          ca: f.bundle,
          cert: f.clientCert,
          key: f.clientKey,
          agent: false,
        },
        (res) => {
          let b = "";
          res.setEncoding("utf8");
          res.on("data", (c: string) => (b += c));
          res.on("end", () => resolve(b));
        },
      );
      req.on("error", reject);
      req.end();
    });
    t.is(body, "spiffe://nops.local/nops/admin/developer");
  }
});

test("dev issuer - reuses its CA and SVIDs across restarts and re-mints after expiry", async (t) => {
  const dir = await tempDir(t);
  const first = await open(dir);
  const firstId = (await first.ready()).svid;
  await first.close();
  const before = await files(dir);

  const second = await open(dir);
  t.teardown(() => second.close());
  t.is((await second.ready()).svid.certificatePem, firstId.certificatePem);
  t.deepEqual(await files(dir), before);

  const later = createManualClock(Date.now() + 400 * DAY); // past the 365-day CA
  const third = await open(dir, later);
  t.teardown(() => third.close());
  const after = await files(dir);
  t.not(after.caCert, before.caCert);
  t.not(after.clientCert, before.clientCert);
  t.true((await third.ready()).svid.notAfter > later.now());
});

test("dev issuer - renews the server SVID at half-life while running", async (t) => {
  const dir = await tempDir(t);
  const clock = createManualClock(Date.now());
  const source = await open(dir, clock, { svidTtlMs: 3600_000, caTtlMs: 30 * DAY, renewCheckIntervalMs: 20 });
  t.teardown(() => source.close());
  const initial = await source.ready();
  const updates: X509Context[] = [];
  source.onUpdate((c) => updates.push(c));
  clock.advance(40 * 60_000);
  await waitFor(() => updates.length === 1, "renewal");
  t.not(updates[0]!.svid.certificatePem, initial.svid.certificatePem);
  t.is(updates[0]!.svid.spiffeId.id, KERNEL_ID);
  t.is(source.current(), updates[0]);
});

test("dev issuer - options are validated with the field named", (t) => {
  t.throws(() => resolveDevX509SourceOptions({}, "identity.dev"), {
    instanceOf: ConfigError,
    message: /identity\.dev\.spiffeId is required/,
  });
  t.throws(() => resolveDevX509SourceOptions({ spiffeId: "spiffe://other.test/x" }, "identity.dev"), {
    message: /identity\.dev\.spiffeId/,
  });
  t.throws(() => resolveDevX509SourceOptions({ spiffeId: KERNEL_ID, ipAddresses: ["localhost"] }, "identity.dev"), {
    message: /identity\.dev\.ipAddresses/,
  });
  const o = resolveDevX509SourceOptions({ spiffeId: KERNEL_ID });
  t.is(o.dir, "./data/dev-identity");
  t.is(o.developerId, "spiffe://nops.local/nops/admin/developer");
});
