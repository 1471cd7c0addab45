// @peculiar/x509 loads tsyringe, which needs a Reflect metadata polyfill at import time.
import "reflect-metadata";
import { randomBytes, webcrypto } from "node:crypto";
import { mkdir, readFile, rename, writeFile } from "node:fs/promises";
import { isIP } from "node:net";
import { join } from "node:path";
import {
  AuthorityKeyIdentifierExtension,
  BasicConstraintsExtension,
  ExtendedKeyUsage,
  ExtendedKeyUsageExtension,
  KeyUsageFlags,
  KeyUsagesExtension,
  SubjectAlternativeNameExtension,
  SubjectKeyIdentifierExtension,
  X509Certificate,
  X509CertificateGenerator,
  type JsonGeneralName,
} from "@peculiar/x509";
import { type Clock, ConfigError, readInt, readObject, readString, readStringList } from "../../common/index.js";
import type { Logger } from "../../telemetry/index.js";
import { parseSpiffeId, parseTrustDomain } from "./spiffe-id.js";
import { verifyPeer } from "./verify-peer.js";
import { createX509Bundle, createX509BundleSet, type X509Bundle } from "./x509-bundle.js";
import { derToPem, pemToDer } from "./x509-encoding.js";
import { createX509SourceState, X509SourceStoppedError, type X509Context, type X509Source } from "./x509-source.js";
import { parseX509Svid, type X509Svid } from "./x509-svid.js";

/** Options of the embedded development issuer. */
export interface DevX509SourceOptions {
  /** Directory holding the dev CA and SVIDs (created, mode 0700). @default "./data/dev-identity" */
  dir: string;
  /** Trust domain of the dev CA. @default "nops.local" */
  trustDomain: string;
  /** The kernel's own SPIFFE ID, e.g. "spiffe://nops.local/nops/kernel/edge-1". Required. */
  spiffeId: string;
  /** SPIFFE ID of the developer client SVID written as svid.pem/svid.key. @default "spiffe://nops.local/nops/admin/developer" */
  developerId: string;
  /** DNS SANs of the kernel's server SVID, so clients can check the host. @default ["localhost"] */
  dnsNames: string[];
  /** IP SANs of the kernel's server SVID. @default ["127.0.0.1"] */
  ipAddresses: string[];
  /** Lifetime of the dev CA in ms. @default 31536000000 (365 days) */
  caTtlMs: number;
  /** Lifetime of minted SVIDs in ms; they are re-minted at half-life. @default 604800000 (7 days) */
  svidTtlMs: number;
  /** How often the running issuer checks whether to re-mint, in ms. @default 60000 */
  renewCheckIntervalMs: number;
}

/** Default dev identity directory. */
export const DEFAULT_DEV_IDENTITY_DIR = "./data/dev-identity";
/** Default dev trust domain. */
export const DEFAULT_DEV_TRUST_DOMAIN = "nops.local";
/** Default developer client SPIFFE ID. */
export const DEFAULT_DEV_DEVELOPER_ID = "spiffe://nops.local/nops/admin/developer";
/** Default DNS SANs of the dev server SVID. */
export const DEFAULT_DEV_DNS_NAMES: readonly string[] = ["localhost"];
/** Default IP SANs of the dev server SVID. */
export const DEFAULT_DEV_IP_ADDRESSES: readonly string[] = ["127.0.0.1"];
/** Default dev CA lifetime. */
export const DEFAULT_DEV_CA_TTL_MS = 365 * 24 * 3600_000;
/** Default dev SVID lifetime. */
export const DEFAULT_DEV_SVID_TTL_MS = 7 * 24 * 3600_000;
/** Default re-mint check interval. */
export const DEFAULT_DEV_RENEW_CHECK_INTERVAL_MS = 60_000;

/** Dependencies of the dev issuer. */
export interface DevX509SourceDeps {
  logger: Logger;
  clock: Clock;
}

function spiffeIdIn(value: string, trustDomain: string, field: string): string {
  try {
    const id = parseSpiffeId(value);
    if (id.trustDomain !== trustDomain || id.path === "")
      throw new Error(`must be a workload ID in trust domain ${trustDomain}`);
  } catch (err) {
    throw new ConfigError(`${field}: ${(err as Error).message}`);
  }
  return value;
}

/** Validates a partial options object and fills defaults; errors name the field under `path`. */
export function resolveDevX509SourceOptions(
  input: Partial<DevX509SourceOptions>,
  path = "spiffe.dev",
): DevX509SourceOptions {
  const o = readObject(input, path);
  const trustDomainText = readString(o, "trustDomain", path, DEFAULT_DEV_TRUST_DOMAIN);
  let trustDomain: string;
  try {
    trustDomain = parseTrustDomain(trustDomainText);
  } catch (err) {
    throw new ConfigError(`${path}.trustDomain: ${(err as Error).message}`);
  }
  const svidTtlMs = readInt(o, "svidTtlMs", path, DEFAULT_DEV_SVID_TTL_MS, 1);
  const caTtlMs = readInt(o, "caTtlMs", path, DEFAULT_DEV_CA_TTL_MS, 1);
  // The CA is renewed when less than two SVID lifetimes remain, so it must be longer than that.
  if (caTtlMs <= 4 * svidTtlMs) throw new ConfigError(`${path}.caTtlMs must be more than 4 × svidTtlMs`);
  const ipAddresses = readStringList(o, "ipAddresses", path, DEFAULT_DEV_IP_ADDRESSES);
  ipAddresses.forEach((ip, i) => {
    if (isIP(ip) === 0) throw new ConfigError(`${path}.ipAddresses[${i}] is not an IP address`);
  });
  return {
    dir: readString(o, "dir", path, DEFAULT_DEV_IDENTITY_DIR, { nonEmpty: true }),
    trustDomain,
    spiffeId: spiffeIdIn(readString(o, "spiffeId", path, "", { nonEmpty: true }), trustDomain, `${path}.spiffeId`),
    developerId: spiffeIdIn(
      readString(o, "developerId", path, DEFAULT_DEV_DEVELOPER_ID),
      trustDomain,
      `${path}.developerId`,
    ),
    dnsNames: readStringList(o, "dnsNames", path, DEFAULT_DEV_DNS_NAMES, { pattern: /^[a-zA-Z0-9.-]+$/ }),
    ipAddresses,
    caTtlMs,
    svidTtlMs,
    renewCheckIntervalMs: readInt(o, "renewCheckIntervalMs", path, DEFAULT_DEV_RENEW_CHECK_INTERVAL_MS, 1),
  };
}

// SPIRE's default key type; ECDSA P-256 with SHA-256 works with every TLS 1.2/1.3 stack.
const KEY_ALGORITHM = { name: "ECDSA", namedCurve: "P-256", hash: "SHA-256" } as const;
// Tolerates clock skew between the kernel and local clients.
const BACKDATE_MS = 60_000;

/** File names inside the dev identity directory. */
export const DEV_IDENTITY_FILES = {
  caCert: "ca.pem",
  caKey: "ca.key",
  serverCert: "kernel-svid.pem",
  serverKey: "kernel-svid.key",
  clientCert: "svid.pem",
  clientKey: "svid.key",
  bundle: "bundle.pem",
} as const;

interface DevCa {
  cert: X509Certificate;
  der: Uint8Array;
  key: webcrypto.CryptoKey;
  bundle: X509Bundle;
}

function serialNumber(): string {
  const bytes = randomBytes(16);
  bytes[0] = (bytes[0] ?? 0) & 0x7f; // RFC 5280 §4.1.2.2: positive
  return bytes.toString("hex");
}

async function writeAtomic(path: string, data: string, mode: number): Promise<void> {
  const tmp = `${path}.${process.pid}.tmp`;
  await writeFile(tmp, data, { mode });
  await rename(tmp, path);
}

async function readOptional(path: string): Promise<string | undefined> {
  try {
    return await readFile(path, "utf8");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw err;
  }
}

function keyPemToDer(pem: string): Uint8Array {
  const der = pemToDer("PRIVATE KEY", pem)[0];
  if (!der) throw new Error("no PRIVATE KEY block");
  return der;
}

/**
 * The embedded development issuer: mints (and keeps under `dir`, reused while valid) a local CA
 * for the dev trust domain, the kernel's server SVID (with DNS/IP SANs so curl can check the host)
 * and a developer client SVID (svid.pem, svid.key, bundle.pem), and serves them through the same
 * X509Source interface as the Workload API. Development only: the CA key sits on disk.
 */
export async function createDevX509Source(
  deps: DevX509SourceDeps,
  input: Partial<DevX509SourceOptions>,
): Promise<X509Source> {
  const options = resolveDevX509SourceOptions(input);
  const logger = deps.logger.child({ component: "spiffe-dev-issuer" });
  const state = createX509SourceState(logger);
  const files = Object.fromEntries(
    Object.entries(DEV_IDENTITY_FILES).map(([k, v]) => [k, join(options.dir, v)]),
  ) as Record<keyof typeof DEV_IDENTITY_FILES, string>;
  await mkdir(options.dir, { recursive: true, mode: 0o700 });

  const remaining = (notAfter: number): number => notAfter - deps.clock.now();

  async function loadCa(): Promise<DevCa | undefined> {
    const certPem = await readOptional(files.caCert);
    const keyPem = await readOptional(files.caKey);
    if (!certPem || !keyPem) return undefined;
    try {
      const der = pemToDer("CERTIFICATE", certPem)[0];
      if (!der) return undefined;
      const cert = new X509Certificate(der);
      const key = await webcrypto.subtle.importKey("pkcs8", keyPemToDer(keyPem), KEY_ALGORITHM, true, ["sign"]);
      const san = cert.getExtension(SubjectAlternativeNameExtension);
      const tdUri = `spiffe://${options.trustDomain}`;
      if (!san?.names.items.some((n) => n.type === "url" && n.value === tdUri)) return undefined;
      if (remaining(cert.notAfter.getTime()) < 2 * options.svidTtlMs) return undefined;
      return { cert, der, key, bundle: createX509Bundle(options.trustDomain, der) };
    } catch (err) {
      logger.warn({ err }, "dev CA on disk is unusable; minting a new one");
      return undefined;
    }
  }

  async function mintCa(): Promise<DevCa> {
    const keys = await webcrypto.subtle.generateKey(KEY_ALGORITHM, true, ["sign", "verify"]);
    const now = deps.clock.now();
    const cert = await X509CertificateGenerator.createSelfSigned(
      {
        serialNumber: serialNumber(),
        name: `CN=NOPS development CA, O=${options.trustDomain}`,
        notBefore: new Date(now - BACKDATE_MS),
        notAfter: new Date(now + options.caTtlMs),
        keys,
        signingAlgorithm: KEY_ALGORITHM,
        extensions: [
          new BasicConstraintsExtension(true, undefined, true),
          // X509-SVID §4.3: signing certificates set keyCertSign (and cRLSign).
          new KeyUsagesExtension(KeyUsageFlags.keyCertSign | KeyUsageFlags.cRLSign, true),
          // X509-SVID §3: a signing certificate may carry the trust domain's SPIFFE ID.
          new SubjectAlternativeNameExtension([{ type: "url", value: `spiffe://${options.trustDomain}` }]),
          await SubjectKeyIdentifierExtension.create(keys.publicKey, false, webcrypto),
        ],
      },
      webcrypto,
    );
    const der = new Uint8Array(cert.rawData);
    const pkcs8 = new Uint8Array(await webcrypto.subtle.exportKey("pkcs8", keys.privateKey));
    await writeAtomic(files.caKey, derToPem("PRIVATE KEY", [pkcs8]), 0o600);
    await writeAtomic(files.caCert, derToPem("CERTIFICATE", [der]), 0o644);
    logger.warn({ dir: options.dir, trustDomain: options.trustDomain }, "minted a new DEVELOPMENT CA");
    return { cert, der, key: keys.privateKey, bundle: createX509Bundle(options.trustDomain, der) };
  }

  async function mintSvid(ca: DevCa, spiffeId: string, extraNames: JsonGeneralName[]): Promise<X509Svid> {
    const keys = await webcrypto.subtle.generateKey(KEY_ALGORITHM, true, ["sign", "verify"]);
    const now = deps.clock.now();
    const notAfter = Math.min(now + options.svidTtlMs, ca.cert.notAfter.getTime());
    const cert = await X509CertificateGenerator.create(
      {
        serialNumber: serialNumber(),
        subject: `O=${options.trustDomain}`,
        issuer: ca.cert.subject,
        notBefore: new Date(now - BACKDATE_MS),
        notAfter: new Date(notAfter),
        publicKey: keys.publicKey,
        signingKey: ca.key,
        signingAlgorithm: KEY_ALGORITHM,
        extensions: [
          new BasicConstraintsExtension(false, undefined, true),
          new KeyUsagesExtension(KeyUsageFlags.digitalSignature, true),
          // X509-SVID §4.4: leaves SHOULD allow both TLS roles.
          new ExtendedKeyUsageExtension([ExtendedKeyUsage.serverAuth, ExtendedKeyUsage.clientAuth]),
          new SubjectAlternativeNameExtension([{ type: "url", value: spiffeId }, ...extraNames]),
          await AuthorityKeyIdentifierExtension.create(ca.cert, false, webcrypto),
        ],
      },
      webcrypto,
    );
    const pkcs8 = new Uint8Array(await webcrypto.subtle.exportKey("pkcs8", keys.privateKey));
    return parseX509Svid({ chain: new Uint8Array(cert.rawData), key: pkcs8, spiffeId });
  }

  async function loadSvid(
    ca: DevCa,
    certPath: string,
    keyPath: string,
    spiffeId: string,
  ): Promise<X509Svid | undefined> {
    const certPem = await readOptional(certPath);
    const keyPem = await readOptional(keyPath);
    if (!certPem || !keyPem) return undefined;
    try {
      const chain = pemToDer("CERTIFICATE", certPem);
      const svid = parseX509Svid({ chain: Buffer.concat(chain), key: keyPemToDer(keyPem), spiffeId });
      verifyPeer(chain, createX509BundleSet([ca.bundle]), deps.clock);
      return remaining(svid.notAfter) < options.svidTtlMs / 2 ? undefined : svid;
    } catch {
      return undefined;
    }
  }

  async function saveSvid(svid: X509Svid, certPath: string, keyPath: string): Promise<void> {
    await writeAtomic(keyPath, svid.privateKeyPem, 0o600);
    await writeAtomic(certPath, svid.certificatePem, 0o644);
  }

  const serverNames: JsonGeneralName[] = [
    ...options.dnsNames.map((value): JsonGeneralName => ({ type: "dns", value })),
    ...options.ipAddresses.map((value): JsonGeneralName => ({ type: "ip", value })),
  ];

  /** Loads what is still valid on disk, mints the rest, publishes when anything changed. */
  async function refresh(): Promise<void> {
    let ca = await loadCa();
    const freshCa = !ca;
    ca ??= await mintCa();
    await writeAtomic(files.bundle, derToPem("CERTIFICATE", [ca.der]), 0o644);
    let server = freshCa ? undefined : await loadSvid(ca, files.serverCert, files.serverKey, options.spiffeId);
    const freshServer = !server;
    if (!server) {
      server = await mintSvid(ca, options.spiffeId, serverNames);
      await saveSvid(server, files.serverCert, files.serverKey);
    }
    if (freshCa || !(await loadSvid(ca, files.clientCert, files.clientKey, options.developerId))) {
      await saveSvid(await mintSvid(ca, options.developerId, []), files.clientCert, files.clientKey);
      logger.warn(
        { spiffeId: options.developerId, dir: options.dir },
        "wrote DEVELOPMENT client SVID (svid.pem, svid.key, bundle.pem)",
      );
    }
    const previous = state.current();
    if (previous && !freshServer && previous.svid.certificatePem === server.certificatePem) return;
    const context: X509Context = { svid: server, bundles: createX509BundleSet([ca.bundle]) };
    logger.warn(
      { spiffeId: server.spiffeId.id, notAfter: new Date(server.notAfter).toISOString(), dir: options.dir },
      "using DEVELOPMENT identity from the embedded issuer; configure a SPIFFE Workload API socket in production",
    );
    state.publish(context);
  }

  await refresh();
  let running: Promise<void> | undefined;
  const timer = setInterval(() => {
    const svid = state.current()?.svid;
    if (running || !svid || remaining(svid.notAfter) >= options.svidTtlMs / 2) return;
    running = refresh()
      .catch((err: unknown) => logger.error({ err }, "dev issuer could not renew the SVID; keeping the current one"))
      .finally(() => {
        running = undefined;
      });
  }, options.renewCheckIntervalMs);
  timer.unref();

  return {
    current: () => state.current(),
    ready: () => state.ready(),
    onUpdate: (listener) => state.onUpdate(listener),
    async close() {
      clearInterval(timer);
      state.stop(new X509SourceStoppedError("X509 source closed"));
      await running;
    },
  };
}
