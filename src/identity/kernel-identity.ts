import { randomBytes } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { Meter } from "@opentelemetry/api";
import type { Clock } from "../common/index.js";
import type { Db } from "../store/index.js";
import type { AuditLog } from "../audit/index.js";
import type { Logger } from "../telemetry/index.js";
import type { KernelInterceptor } from "../server/index.js";
import { createAuthnInterceptor, type AuthnOptions } from "./authn-interceptor.js";
import { createSpiffePrincipalMapper, type SpiffePrincipalOptions } from "./spiffe-principal-mapper.js";
import { createJwtVerifier, type JwtVerifierOptions } from "./jwt/jwt-verifier.js";
import {
  createApiKeyStore,
  resolveApiKeyOptions,
  type ApiKeyOptions,
  type ApiKeyStore,
} from "./api-keys/api-key-store.js";
import {
  createDevX509Source,
  createTlsMaterial,
  createWorkloadX509Source,
  withFederatedBundles,
  type FederatedBundles,
  type TlsMaterial,
  type X509Source,
} from "./spiffe/index.js";

/** Where the kernel's own identity comes from. */
export type IdentitySource = "auto" | "workload-api" | "dev" | "none";

/** Workload identity and caller credentials. */
export interface IdentityOptions {
  /**
   * "workload-api": SVIDs from the SPIRE agent at `socket`; "dev": the embedded issuer mints a
   * local CA under `devDir`; "auto": workload-api when a socket is known, else dev; "none":
   * plaintext servers and anonymous callers (tests, benchmarks, local experiments). @default "auto"
   */
  source: IdentitySource;
  /** Workload API address (`unix:///abs/path` or `tcp://ip:port`); SPIFFE_ENDPOINT_SOCKET when empty. @default "" */
  socket: string;
  /** Development identity directory. @default "<dataDir>/dev-identity" */
  devDir: string;
  /**
   * Pepper of the API key hashes, base64 of 32..64 bytes; generated into <dataDir>/api-key-pepper when empty.
   * @default ""
   */
  apiKeyPepper: string;
  /** SPIFFE id -> principal rules (see docs/identity.md). */
  spiffe: SpiffePrincipalOptions;
  /** JWT bearer tokens; accepted only when this section is configured. */
  jwt?: JwtVerifierOptions;
}

/** The parts of the kernel's options the identity wiring reads. */
export interface KernelIdentityOptions {
  /** This edge's id: the last segment of the kernel's own SPIFFE id. */
  edgeId: string;
  /** Where a generated API key pepper is kept. */
  dataDir: string;
  /** This kernel's SPIFFE trust domain. */
  trustDomain: string;
  identity: IdentityOptions;
  /** Caller authentication (see docs/identity.md). */
  authn: AuthnOptions;
}

/** The kernel's identity: its TLS material (absent in "none" mode) and caller authentication. */
export interface KernelIdentity {
  /** "workload-api", "dev" or "none": what `identity.source` resolved to. */
  readonly source: "workload-api" | "dev" | "none";
  readonly tls?: TlsMaterial;
  readonly x509?: X509Source;
  readonly apiKeys: ApiKeyStore;
  readonly apiKeyOptions: ApiKeyOptions;
  readonly authn: KernelInterceptor;
  close(): Promise<void>;
}

/** Dependencies of the identity wiring. */
export interface KernelIdentityDeps {
  db: Db;
  audit: AuditLog;
  clock: Clock;
  logger: Logger;
  meter: Meter;
  fetch?: typeof fetch;
  /** Bundles of federated peers (the federation registry); trusted beside the source's own. */
  federatedBundles?: FederatedBundles;
}

// The pepper must outlive restarts (or every key stops verifying) and stay out of the database.
function pepper(options: KernelIdentityOptions, log: Logger): string {
  if (options.identity.apiKeyPepper) return options.identity.apiKeyPepper;
  const file = join(options.dataDir, "api-key-pepper");
  if (existsSync(file)) return readFileSync(file, "utf8").trim();
  mkdirSync(options.dataDir, { recursive: true, mode: 0o700 });
  const generated = randomBytes(32).toString("base64");
  writeFileSync(file, generated + "\n", { mode: 0o600, flag: "wx" });
  log.warn({ file }, "generated an API key pepper; set identity.apiKeyPepper from a secret store in production");
  return generated;
}

/** Builds the identity source, TLS material, the API key store and the authn interceptor from options. */
export async function createKernelIdentity(
  deps: KernelIdentityDeps,
  options: KernelIdentityOptions,
): Promise<KernelIdentity> {
  const log = deps.logger.child({ component: "identity" });
  const { identity } = options;
  const source = identity.source === "auto" ? (identity.socket ? "workload-api" : "dev") : identity.source;
  const kernelId = `spiffe://${options.trustDomain}/nops/kernel/${options.edgeId}`;

  let x509: X509Source | undefined;
  if (source === "workload-api") {
    if (!identity.socket)
      throw new Error(
        "identity.source is workload-api but no socket is configured (identity.socket or SPIFFE_ENDPOINT_SOCKET)",
      );
    x509 = createWorkloadX509Source(
      { logger: deps.logger, clock: deps.clock, meter: deps.meter },
      { socket: identity.socket },
    );
    log.info({ socket: identity.socket }, "waiting for the first SVID from the SPIFFE Workload API");
  } else if (source === "dev") {
    x509 = await createDevX509Source(
      { logger: deps.logger, clock: deps.clock },
      {
        dir: identity.devDir,
        trustDomain: options.trustDomain,
        spiffeId: kernelId,
        // The developer SVID lives in the kernel's trust domain, whichever it is (two-kernel federation).
        developerId: `spiffe://${options.trustDomain}/nops/admin/developer`,
      },
    );
  } else {
    log.warn(
      "identity.source is none: plaintext servers, anonymous callers allowed; never use this outside development",
    );
  }
  if (x509 && deps.federatedBundles) x509 = withFederatedBundles(x509, deps.federatedBundles, deps.logger);
  const ctx = await x509?.ready();
  if (ctx) log.info({ spiffeId: ctx.svid.spiffeId, source }, "workload identity ready");
  const tls = x509 && createTlsMaterial({ source: x509, clock: deps.clock, logger: deps.logger });

  const apiKeyOptions = resolveApiKeyOptions({ pepper: pepper(options, log) }, "identity.apiKeyPepper");
  const apiKeys = createApiKeyStore({ db: deps.db, clock: deps.clock }, apiKeyOptions);
  const authn = createAuthnInterceptor(
    {
      verifyPeer: tls ? (chain) => tls.verifyPeer(chain) : undefined,
      onTrustChange: x509 && ((listener) => x509.onUpdate(() => listener())),
      spiffePrincipals: createSpiffePrincipalMapper(identity.spiffe),
      jwt:
        identity.jwt && createJwtVerifier({ clock: deps.clock, logger: deps.logger, fetch: deps.fetch }, identity.jwt),
      apiKeys,
      audit: deps.audit,
      clock: deps.clock,
      logger: deps.logger.child({ component: "authn" }),
    },
    options.authn,
  );
  return {
    source,
    tls,
    x509,
    apiKeys,
    apiKeyOptions,
    authn,
    close: async () => {
      tls?.close();
      await x509?.close();
    },
  };
}
