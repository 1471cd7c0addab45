import "reflect-metadata";
import { webcrypto, X509Certificate as NodeX509 } from "node:crypto";
import { readFile, stat } from "node:fs/promises";
import { join } from "node:path";
import * as grpc from "@grpc/grpc-js";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import {
  AuthorityKeyIdentifierExtension,
  BasicConstraintsExtension,
  ExtendedKeyUsage,
  ExtendedKeyUsageExtension,
  KeyUsageFlags,
  KeyUsagesExtension,
  SubjectAlternativeNameExtension,
  X509Certificate,
  X509CertificateGenerator,
} from "@peculiar/x509";
import {
  X509SVIDRequestSchema,
  X509SVIDResponseSchema,
  type X509SVIDResponse,
} from "./gen/spiffe/workload/workload_pb.js";
import { ConfigurationError, IdentityError } from "./errors.js";
import { fromPem, splitDer, toPem } from "./pem.js";

/** The agent's X.509 identity at one moment: what both its server and its kernel client present. */
export interface TlsIdentity {
  /** The SVID's SPIFFE ID. */
  spiffeId: string;
  /** Leaf first, PEM. */
  certPem: string;
  /** PKCS#8 private key, PEM. */
  keyPem: string;
  /** Trust anchors (own and federated trust domains), PEM. */
  bundlePem: string;
  /** Expiry of the leaf, epoch ms. */
  notAfter: number;
}

/** A source of X.509 identity that may rotate. */
export interface IdentityProvider {
  /** Resolves with the first identity. */
  ready(): Promise<TlsIdentity>;
  /** The current identity; throws before ready(). */
  current(): TlsIdentity;
  /** Called with every new identity; returns an unsubscribe function. */
  onUpdate(listener: (identity: TlsIdentity) => void): () => void;
  close(): Promise<void>;
}

/** Mint an agent SVID from the kernel's development issuer (its CA files on disk). Development only. */
export interface DevIdentityOptions {
  type: "dev";
  /** The dev issuer's directory (holds ca.pem and ca.key). @default "./data/dev-identity" */
  dir?: string;
  /** The dev trust domain. @default "nops.local" */
  trustDomain?: string;
  /** Lifetime of each minted SVID; a new one is minted at half-life (hot rotation). @default 3_600_000 */
  svidTtlMs?: number;
}

/** Stream the SVID and bundles from the SPIFFE Workload API (SPIRE agent). */
export interface WorkloadApiIdentityOptions {
  type: "workload-api";
  /** `unix:///path/agent.sock` or `tcp://ip:port`. @default process.env.SPIFFE_ENDPOINT_SOCKET */
  socket?: string;
}

/** Read the SVID from PEM files, re-read when they change (e.g. spiffe-helper or a CSI volume). */
export interface FileIdentityOptions {
  type: "files";
  /** Leaf-first certificate chain, PEM. */
  certFile: string;
  /** PKCS#8 key, PEM. */
  keyFile: string;
  /** Trust bundle, PEM. */
  bundleFile: string;
  /** How often the files are checked for changes. @default 5000 */
  pollIntervalMs?: number;
}

/** Where the agent's X.509 identity comes from. */
export type IdentityOptions = DevIdentityOptions | WorkloadApiIdentityOptions | FileIdentityOptions;

/** Default dev issuer directory (the kernel's `identity.devDir` default). */
export const DEFAULT_DEV_DIR = "./data/dev-identity";
/** Default dev trust domain. */
export const DEFAULT_TRUST_DOMAIN = "nops.local";
/** Default lifetime of a dev-minted agent SVID. */
export const DEFAULT_DEV_SVID_TTL_MS = 3_600_000;

const ALG = { name: "ECDSA", namedCurve: "P-256", hash: "SHA-256" } as const;

/** The SPIFFE ID of an agent: spiffe://<td>/nops/tenant/<tenant>/agent/<name> (docs/identity.md). */
export function agentSpiffeId(trustDomain: string, tenant: string, name: string): string {
  // SPIFFE ID §2.2: path segments are letters, digits, ".", "-" and "_" only.
  if (!/^[A-Za-z0-9._-]+$/.test(name) || name === "." || name === "..")
    throw new ConfigurationError(
      `name must be letters, digits, ".", "-" or "_" to be part of a SPIFFE ID (got ${JSON.stringify(name)})`,
    );
  return `spiffe://${trustDomain}/nops/tenant/${tenant}/agent/${name}`;
}

function spiffeIdOf(certPem: string): { id: string; notAfter: number } {
  const cert = new NodeX509(certPem);
  const uri = (cert.subjectAltName ?? "")
    .split(", ")
    .find((s) => s.startsWith("URI:spiffe://"))
    ?.slice(4);
  if (!uri) throw new IdentityError("certificate has no SPIFFE ID (URI SAN)");
  return { id: uri, notAfter: Date.parse(cert.validTo) };
}

function createState() {
  let cur: TlsIdentity | undefined;
  const listeners = new Set<(i: TlsIdentity) => void>();
  let resolveReady!: (i: TlsIdentity) => void;
  let rejectReady!: (e: unknown) => void;
  const readyP = new Promise<TlsIdentity>((res, rej) => {
    resolveReady = res;
    rejectReady = rej;
  });
  readyP.catch(() => undefined);
  return {
    set(i: TlsIdentity) {
      const first = cur === undefined;
      cur = i;
      if (first) resolveReady(i);
      else for (const l of listeners) l(i);
    },
    fail: (e: unknown) => rejectReady(e),
    api: {
      ready: () => readyP,
      current() {
        if (!cur) throw new IdentityError("identity is not ready yet");
        return cur;
      },
      onUpdate(l: (i: TlsIdentity) => void) {
        listeners.add(l);
        return () => void listeners.delete(l);
      },
    },
  };
}

/** Mints agent SVIDs from the dev CA, re-minting at half-life so rotation runs in development too. */
export function createDevIdentity(o: DevIdentityOptions, spiffeId: string): IdentityProvider {
  const dir = o.dir ?? DEFAULT_DEV_DIR;
  const ttl = o.svidTtlMs ?? DEFAULT_DEV_SVID_TTL_MS;
  if (!(ttl >= 2000)) throw new ConfigurationError("identity.svidTtlMs must be at least 2000");
  const state = createState();
  let timer: NodeJS.Timeout | undefined;
  let closed = false;

  const mint = async (): Promise<TlsIdentity> => {
    let caPem: string;
    let caKeyPem: string;
    try {
      caPem = await readFile(join(dir, "ca.pem"), "utf8");
      caKeyPem = await readFile(join(dir, "ca.key"), "utf8");
    } catch (e) {
      throw new IdentityError(
        `dev identity: cannot read ca.pem/ca.key in ${dir} (start the kernel once with the dev issuer)`,
        { cause: e },
      );
    }
    const ca = new X509Certificate(caPem);
    const caKeyDer = fromPem("PRIVATE KEY", caKeyPem)[0];
    if (!caKeyDer) throw new IdentityError(`dev identity: ${join(dir, "ca.key")} holds no PKCS#8 key`);
    const caKey = await webcrypto.subtle.importKey("pkcs8", caKeyDer, ALG, false, ["sign"]);
    const keys = await webcrypto.subtle.generateKey(ALG, true, ["sign", "verify"]);
    const now = Date.now();
    const notAfter = Math.min(now + ttl, ca.notAfter.getTime());
    const cert = await X509CertificateGenerator.create(
      {
        serialNumber: Buffer.from(webcrypto.getRandomValues(new Uint8Array(16)))
          .toString("hex")
          .replace(/^[89a-f]/, "7"),
        subject: `O=${o.trustDomain ?? DEFAULT_TRUST_DOMAIN}`,
        issuer: ca.subject,
        // Tolerates clock skew between the agent and the kernel.
        notBefore: new Date(now - 60_000),
        notAfter: new Date(notAfter),
        publicKey: keys.publicKey,
        signingKey: caKey,
        signingAlgorithm: ALG,
        extensions: [
          new BasicConstraintsExtension(false, undefined, true),
          new KeyUsagesExtension(KeyUsageFlags.digitalSignature, true),
          // X509-SVID §4.4: one leaf serves both TLS roles (the agent's server and its kernel client).
          new ExtendedKeyUsageExtension([ExtendedKeyUsage.serverAuth, ExtendedKeyUsage.clientAuth]),
          new SubjectAlternativeNameExtension([{ type: "url", value: spiffeId }]),
          await AuthorityKeyIdentifierExtension.create(ca, false, webcrypto),
        ],
      },
      webcrypto,
    );
    const pkcs8 = new Uint8Array(await webcrypto.subtle.exportKey("pkcs8", keys.privateKey));
    return {
      spiffeId,
      certPem: toPem("CERTIFICATE", [new Uint8Array(cert.rawData)]),
      keyPem: toPem("PRIVATE KEY", [pkcs8]),
      bundlePem: caPem,
      notAfter,
    };
  };

  const schedule = (i: TlsIdentity) => {
    if (closed) return;
    const delay = Math.max(1000, (i.notAfter - Date.now()) / 2);
    timer = setTimeout(() => {
      mint().then(
        (next) => {
          state.set(next);
          schedule(next);
        },
        // A failed renewal keeps the current SVID and tries again soon.
        () => schedule({ ...i, notAfter: Date.now() + 10_000 }),
      );
    }, delay);
    timer.unref();
  };

  mint().then(
    (i) => {
      state.set(i);
      schedule(i);
    },
    (e: unknown) => state.fail(e),
  );
  return {
    ...state.api,
    async close() {
      closed = true;
      clearTimeout(timer);
    },
  };
}

/** Reads SVID files and re-reads them when their modification time changes. */
export function createFileIdentity(o: FileIdentityOptions): IdentityProvider {
  const state = createState();
  let last = "";
  let closed = false;
  let timer: NodeJS.Timeout | undefined;
  const load = async () => {
    const stamps = await Promise.all([o.certFile, o.keyFile, o.bundleFile].map(async (f) => (await stat(f)).mtimeMs));
    const stamp = stamps.join(",");
    if (stamp === last) return;
    const [certPem, keyPem, bundlePem] = await Promise.all(
      [o.certFile, o.keyFile, o.bundleFile].map((f) => readFile(f, "utf8")),
    );
    const { id, notAfter } = spiffeIdOf(certPem as string);
    last = stamp;
    state.set({
      spiffeId: id,
      certPem: certPem as string,
      keyPem: keyPem as string,
      bundlePem: bundlePem as string,
      notAfter,
    });
  };
  const poll = () => {
    if (closed) return;
    timer = setTimeout(
      () =>
        void load()
          .catch(() => undefined)
          .finally(poll),
      o.pollIntervalMs ?? 5000,
    );
    timer.unref();
  };
  load().then(poll, (e: unknown) =>
    state.fail(new IdentityError(`cannot read the SVID files: ${String(e)}`, { cause: e })),
  );
  return {
    ...state.api,
    async close() {
      closed = true;
      clearTimeout(timer);
    },
  };
}

function workloadTarget(socket: string): string {
  if (socket.startsWith("unix://")) return `unix://${socket.slice("unix://".length)}`;
  if (socket.startsWith("tcp://")) return socket.slice("tcp://".length);
  throw new ConfigurationError(`identity.socket must be unix:///path or tcp://ip:port (got ${JSON.stringify(socket)})`);
}

/**
 * Streams X509-SVIDs from the SPIFFE Workload API (FetchX509SVID, header workload.spiffe.io:
 * true). Every message is the full state; the stream is reopened with capped backoff when it ends.
 */
export function createWorkloadApiIdentity(o: WorkloadApiIdentityOptions): IdentityProvider {
  if (!o.socket)
    throw new ConfigurationError("identity.socket (or SPIFFE_ENDPOINT_SOCKET) is required for workload-api");
  const client = new grpc.Client(workloadTarget(o.socket), grpc.credentials.createInsecure());
  const state = createState();
  let closed = false;
  let call: grpc.ClientReadableStream<X509SVIDResponse> | undefined;
  let backoff = 100;
  let timer: NodeJS.Timeout | undefined;

  const open = () => {
    if (closed) return;
    const md = new grpc.Metadata();
    md.set("workload.spiffe.io", "true");
    call = client.makeServerStreamRequest(
      "/SpiffeWorkloadAPI/FetchX509SVID",
      (m: ReturnType<typeof create<typeof X509SVIDRequestSchema>>) => Buffer.from(toBinary(X509SVIDRequestSchema, m)),
      (b: Buffer) => fromBinary(X509SVIDResponseSchema, b),
      create(X509SVIDRequestSchema, {}),
      md,
    );
    call.on("data", (res: X509SVIDResponse) => {
      const svid = res.svids[0];
      if (!svid) return;
      try {
        const certPem = toPem("CERTIFICATE", splitDer(svid.x509Svid));
        const bundles = [svid.bundle, ...Object.values(res.federatedBundles)].flatMap((b) => splitDer(b));
        const { notAfter } = spiffeIdOf(certPem);
        backoff = 100;
        state.set({
          spiffeId: svid.spiffeId,
          certPem,
          keyPem: toPem("PRIVATE KEY", [svid.x509SvidKey]),
          bundlePem: toPem("CERTIFICATE", bundles),
          notAfter,
        });
      } catch {
        // A malformed message is skipped; the previous identity stays.
      }
    });
    const retry = () => {
      call?.removeAllListeners();
      call = undefined;
      if (closed) return;
      timer = setTimeout(open, backoff * (0.5 + Math.random()));
      timer.unref();
      backoff = Math.min(backoff * 2, 30_000);
    };
    call.on("error", retry);
    call.on("end", retry);
  };
  open();
  return {
    ...state.api,
    async close() {
      closed = true;
      clearTimeout(timer);
      call?.cancel();
      client.close();
    },
  };
}

/** Builds the provider for the configured identity; `spiffeId` is the agent's for dev minting. */
export function createIdentityProvider(o: IdentityOptions, spiffeId: string): IdentityProvider {
  switch (o.type) {
    case "dev":
      return createDevIdentity(o, spiffeId);
    case "workload-api":
      return createWorkloadApiIdentity(o);
    case "files":
      return createFileIdentity(o);
    default:
      throw new ConfigurationError(`identity.type must be "dev", "workload-api" or "files"`);
  }
}
