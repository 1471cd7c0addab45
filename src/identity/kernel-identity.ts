import { randomBytes } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, realpathSync, writeFileSync } from "node:fs";
import { basename, dirname, join, resolve, sep } from "node:path";
import type { Meter } from "@opentelemetry/api";
import { ConfigError, type Clock } from "../common/index.js";
import type { Db } from "../store/index.js";
import type { AuditLog } from "../audit/index.js";
import type { Logger } from "../telemetry/index.js";
import type { KernelInterceptor } from "../server/index.js";
import { createAuthnInterceptor, type AuthnOptions } from "./authn-interceptor.js";
import { createSpiffePrincipalMapper, type SpiffePrincipalOptions } from "./spiffe-principal-mapper.js";
import { createJwtVerifier, type JwtVerifierOptions } from "./jwt/jwt-verifier.js";
import { resolveJwtInvokeOptions, withJwtInvokeGrants, type JwtInvokeOptions } from "./jwt-invoke-grants.js";
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
   * Pepper of the API key hashes, base64 of 32..64 bytes (from a secret store); when empty it is
   * read from `apiKeyPepperFile`, else generated into <dataDir>/api-key-pepper. @default ""
   */
  apiKeyPepper: string;
  /** File holding the pepper (e.g. a mounted secret); must exist when set. @default "" */
  apiKeyPepperFile: string;
  /**
   * Lets the pepper file sit in the database's directory (or below it), where a copy of the data
   * directory carries both the key hashes and their key. Development only.
   * @default true for development identities ("dev", "none", "auto" without a socket), else false
   */
  allowPepperBesideDatabase: boolean;
  /** SPIFFE id -> principal rules (see docs/identity.md). */
  spiffe: SpiffePrincipalOptions;
  /** JWT bearer tokens; accepted only when this section is configured. */
  jwt?: JwtVerifierOptions;
  /** Invoke grants of JWT principals (the `invokeClaim` / `issuerInvoke` fields of `identity.jwt`). */
  jwtInvoke?: JwtInvokeOptions;
}

/** The parts of the kernel's options the identity wiring reads. */
export interface KernelIdentityOptions {
  /** This edge's id: the last segment of the kernel's own SPIFFE id. */
  edgeId: string;
  /** Where a generated API key pepper is kept. */
  dataDir: string;
  /** The SQLite file: the pepper must not sit beside it (identity.allowPepperBesideDatabase). */
  databasePath: string;
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
  /**
   * The same authentication for another resource: bearer tokens must name one of `audience` (e.g. the
   * MCP endpoint's resource URI, RFC 8707); API keys and SVIDs are checked as by `authn`.
   */
  authnForAudience(audience: string[]): KernelInterceptor;
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

/** The directory `path` names, symlinks resolved (as far as it exists). */
function realDir(path: string): string {
  let dir = resolve(path);
  let rest = "";
  for (;;) {
    try {
      return join(realpathSync(dir), rest);
    } catch {
      const parent = dirname(dir);
      if (parent === dir) return resolve(path);
      rest = join(basename(dir), rest);
      dir = parent;
    }
  }
}

// The pepper must outlive restarts (or every key stops verifying) and stay out of the database,
// and out of its directory too: a backup or copy of that directory would carry the hashes and the
// key to test guesses against them (issue 13 item 17).
function pepper(options: KernelIdentityOptions, log: Logger): string {
  const { identity } = options;
  if (identity.apiKeyPepper) return identity.apiKeyPepper;
  const file = identity.apiKeyPepperFile || join(options.dataDir, "api-key-pepper");
  const databaseDir = realDir(dirname(options.databasePath));
  const pepperDir = realDir(dirname(file));
  if (!identity.allowPepperBesideDatabase && (pepperDir === databaseDir || pepperDir.startsWith(databaseDir + sep))) {
    throw new ConfigError(
      `${identity.apiKeyPepperFile ? "identity.apiKeyPepperFile" : "identity.apiKeyPepper"}: the API key pepper ` +
        `must not sit beside the database (${file} is in ${databaseDir}); set identity.apiKeyPepper from a ` +
        "secret store or identity.apiKeyPepperFile outside it, or identity.allowPepperBesideDatabase: true for development",
    );
  }
  if (identity.apiKeyPepperFile) {
    try {
      return readFileSync(file, "utf8").trim();
    } catch (err) {
      throw new ConfigError(`identity.apiKeyPepperFile: ${file} cannot be read`, { cause: err });
    }
  }
  if (existsSync(file)) return readFileSync(file, "utf8").trim();
  mkdirSync(options.dataDir, { recursive: true, mode: 0o700 });
  const generated = randomBytes(32).toString("base64");
  writeFileSync(file, generated + "\n", { mode: 0o600, flag: "wx" });
  log.warn(
    { file },
    "generated a development API key pepper beside the database; set identity.apiKeyPepper in production",
  );
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
  // Before any identity work: a refused pepper stops the start with nothing to undo.
  const apiKeyOptions = resolveApiKeyOptions({ pepper: pepper(options, log) }, "identity.apiKeyPepper");

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

  const apiKeys = createApiKeyStore({ db: deps.db, clock: deps.clock }, apiKeyOptions);
  const spiffePrincipals = createSpiffePrincipalMapper(identity.spiffe);
  const authnWith = (jwt: JwtVerifierOptions | undefined) =>
    createAuthnInterceptor(
      {
        verifyPeer: tls ? (chain) => tls.verifyPeer(chain) : undefined,
        onTrustChange: x509 && ((listener) => x509.onUpdate(() => listener())),
        spiffePrincipals,
        jwt:
          jwt &&
          withJwtInvokeGrants(
            createJwtVerifier({ clock: deps.clock, logger: deps.logger, fetch: deps.fetch }, jwt),
            identity.jwtInvoke ?? resolveJwtInvokeOptions({}, jwt.issuer),
          ),
        apiKeys,
        audit: deps.audit,
        clock: deps.clock,
        logger: deps.logger.child({ component: "authn" }),
      },
      options.authn,
    );
  const authn = authnWith(identity.jwt);
  return {
    source,
    tls,
    x509,
    apiKeys,
    apiKeyOptions,
    authn,
    authnForAudience: (audience) => authnWith(identity.jwt && { ...identity.jwt, audience }),
    close: async () => {
      tls?.close();
      await x509?.close();
    },
  };
}
