import { join } from "node:path";
import { ConfigError } from "../common/errors.js";
import { readBool, readInt, readSection, readString, readStringList, type RawSection } from "../common/fields.js";
import { resolveAuthnOptions, type AuthnOptions } from "../identity/authn-interceptor.js";
import { resolveAuthzOptions, type AuthzOptions } from "../authz/authz-options.js";
import { resolveMcpOptions, type McpOptions } from "../mcp/mcp-options.js";
import { resolveSpiffePrincipalOptions } from "../identity/spiffe-principal-mapper.js";
import { resolveJwtVerifierOptions } from "../identity/jwt/jwt-verifier.js";
import { resolveJwtInvokeOptions } from "../identity/jwt-invoke-grants.js";
import { resolveRoutingOptions, type RoutingOptions } from "../routing/routing-options.js";
import { resolveRoutingServiceOptions, type RoutingServiceOptions } from "../routing/routing-service.js";
import { resolveRateLimitOptions, type RateLimitOptions } from "../ratelimit/rate-limit-options.js";
import {
  resolveRequestSigningOptions,
  type RequestSigningOptions,
} from "../identity/request-signing/request-signing-options.js";
import { resolveEgressGuardOptions, type EgressGuardOptions } from "../egress/egress-guard.js";
import { resolveDgeClientOptions, type DgeClientOptions } from "../clients/dge-client.js";
import {
  resolveDgePoliciesOptions,
  resolveDgeServerOptions,
  type DgePoliciesOptions,
  type DgeServerOptions,
} from "../../packages/reference-dge/src/index.js";
import { resolveTelemetryOptions, type TelemetryOptions } from "../telemetry/telemetry-options.js";
import { resolveAdminOptions, type AdminOptions } from "./admin-options.js";
import { resolveFederationOptions, type FederationOptions } from "../federation/federation-options.js";
import { resolveEventBusOptions, type EventBusOptions } from "../events/event-bus-options.js";
import { resolveEventBusServiceOptions, type EventBusServiceOptions } from "../events/event-bus-service.js";
import type { LimitOptions } from "../server/limit-options.js";
import type { RegistryOptions } from "../registry/registry-options.js";
import type { IdentityOptions, IdentitySource } from "../identity/kernel-identity.js";
import { DEFAULT_AUDIT_OPTIONS, resolveAuditOptions, type AuditOptions } from "../audit/audit-options.js";
import { DEFAULT_RELEASE_OPTIONS, resolveReleaseOptions, type ReleaseOptions } from "../release/release-options.js";

/** Where a server listens. */
export interface ListenOptions {
  /** Interface to bind. */
  host: string;
  /** TCP port; 0 picks a free one. */
  port: number;
}

/** Every option of the kernel. Defaults are the embedded development setup: SQLite only. */
export interface KernelOptions {
  /** This edge's id: the source of its events and part of every NATS message id. @default "edge-local" */
  edgeId: string;
  /** Directory for the database and development identity. @default "./data" */
  dataDir: string;
  /** SQLite file. @default "<dataDir>/kernel.db" */
  databasePath: string;
  /** Native gRPC (grpc-js). @default { host: "127.0.0.1", port: 50051 } */
  grpc: ListenOptions;
  /**
   * Connect, gRPC-Web and gRPC over HTTP/1.1 and HTTP/2, plus /healthz, /readyz.
   * @default { host: "127.0.0.1", port: 8080 }
   */
  http: ListenOptions;
  limits: LimitOptions;
  /** Serve grpc.reflection.v1 (lets grpcurl and buf curl discover the API). @default false */
  reflection: boolean;
  registry: RegistryOptions;
  log: {
    /** pino level: trace, debug, info, warn, error, fatal, silent. @default "info" */
    level: string;
    /** Extra paths to redact from log lines. @default [] */
    redactPaths: string[];
  };
  /** How long shutdown waits for in-flight calls before closing connections. @default 10000 */
  shutdownGraceMs: number;
  /** This kernel's SPIFFE trust domain. @default "nops.local" */
  trustDomain: string;
  identity: IdentityOptions;
  /** Caller authentication (see docs/identity.md). */
  authn: AuthnOptions;
  /** Roles, scopes and tenant rules (see docs/identity.md). */
  authz: AuthzOptions;
  /** Shared Redis for rate limits, nonces and the DGE cache; empty runs in-memory only. @default "" */
  redis: { url: string };
  /** The Data Governance Engine the Egress Guard asks. */
  dge: {
    /** DGE_ENABLED: false allows all egress with a warning (no fail-closed). @default true */
    enabled: boolean;
    /** Client settings; `url` empty starts the embedded reference DGE on a loopback port. */
    client: DgeClientOptions;
    /** True when the kernel runs the reference DGE itself (dge.url empty). */
    embedded: boolean;
    /**
     * Policies of the embedded DGE (dge.url empty only); the hub's set_dge_policy commands apply on top
     * (docs/egress.md, "Where policies come from"). @default every tier allows D1 (no PII) to any destination
     */
    policies: DgePoliciesOptions;
  };
  /** Egress Guard: tiers per tenant, break-glass approvers, cache (see docs/egress.md). */
  egress: EgressGuardOptions;
  /** Agent selection and resilience (see docs/routing.md). */
  routing: RoutingOptions & { service: RoutingServiceOptions };
  /** Per-IP and per-tier limits (see docs/routing.md). */
  rateLimit: RateLimitOptions;
  /** HMAC-signed requests for agents off the mesh (see docs/signed-requests.md). */
  requestSigning: RequestSigningOptions;
  /** The local NATS leaf node the outbox relays to. */
  nats: {
    /** Client URL of the leaf (the sidecar in production). Empty: supervise a dev leaf, see `leaf`. @default "" */
    url: string;
    /**
     * With no url: "auto" starts and supervises a nats-server leaf when the binary is on PATH; "off" runs
     * without NATS (events wait in the outbox). @default "auto"
     */
    leaf: "auto" | "off";
    /** Leafnode remote of the hub for a supervised leaf (credentials in the URL); empty: standalone. @default "" */
    hubUrl: string;
    /**
     * UDP port on 127.0.0.1 where the kernel receives the leaf sidecar's log as syslog
     * (`nats-server -D -r udp://127.0.0.1:<port>`), to count the publishes the hub link refused
     * (docs/events.md, "Link status"); 0 = off. A supervised leaf's log is read from its stderr. @default 0
     */
    leafLogPort: number;
  };
  /** Event bus: streams, relay, hub confirmation, idempotency (see docs/events.md). */
  events: EventBusOptions & { service: EventBusServiceOptions };
  /** Settings of `nops-kernel dge` (the reference DGE server); unused by `serve`. */
  dgeServer?: DgeServerOptions;
  /** Tracing exporter, service name, extra log scrub patterns (see docs/observability.md). */
  telemetry: TelemetryOptions;
  /** Criticality matrix, overload shedding, dependency budgets (see docs/observability.md). */
  admin: AdminOptions;
  /** The verifiable audit log: checkpoint key, origin, cadence (see docs/audit.md). */
  audit: AuditOptions;
  /** Verify the signed release before serving (see docs/release.md). */
  release: ReleaseOptions;
  /** The MCP endpoint on the HTTP port (see docs/mcp.md). */
  mcp: McpOptions;
  /** Federation with peer kernels: advertised endpoints, pinned peers (see docs/federation.md). */
  federation: FederationOptions;
}

/** The defaults, as a raw tree: also the source of the environment variable names. */
export const DEFAULT_KERNEL_OPTIONS = {
  edgeId: "edge-local",
  dataDir: "./data",
  databasePath: "",
  grpc: { host: "127.0.0.1", port: 50051 },
  http: { host: "127.0.0.1", port: 8080 },
  limits: {
    maxMessageBytes: 4 * 1024 * 1024,
    maxDeadlineMs: 30_000,
    maxConcurrentStreams: 256,
    maxHeaderBytes: 16 * 1024,
    maxHeaderCount: 64,
    maxConnections: 0,
    maxConnectionsPerIp: 256,
    tlsHandshakeTimeoutMs: 10_000,
    headersTimeoutMs: 10_000,
    requestTimeoutMs: 30_000,
    keepAliveTimeoutMs: 5_000,
    sessionIdleTimeoutMs: 300_000,
    keepalivePingIntervalMs: 30_000,
    pingTimeoutMs: 5_000,
    maxConnectionAgeMs: 0,
  },
  reflection: false,
  registry: {
    heartbeatTtlMs: 15_000,
    zombieAfterMs: 60_000,
    reapAfterMs: 600_000,
    sweepIntervalMs: 1_000,
    heartbeatFlushMs: 1_000,
    maxAgentBytes: 64 * 1024,
  },
  log: { level: "info", redactPaths: [] as string[] },
  shutdownGraceMs: 10_000,
  trustDomain: "nops.local",
  // Sections given as {} are validated by their own resolvers and set from the config file only.
  identity: {
    source: "auto",
    socket: "",
    devDir: "",
    apiKeyPepper: "",
    apiKeyPepperFile: "",
    // Resolved by source (development identities allow it) unless set.
    allowPepperBesideDatabase: false,
    spiffe: {},
    jwt: {},
  },
  authn: {},
  authz: {},
  redis: { url: "" },
  dge: { enabled: true, url: "", protocol: "grpc", keys: {}, maxSkewMs: 300_000, policies: {} },
  egress: {},
  routing: {},
  rateLimit: {},
  requestSigning: {},
  nats: { url: "", leaf: "auto", hubUrl: "", leafLogPort: 0 },
  events: {},
  dgeServer: {},
  telemetry: {},
  admin: {},
  audit: { ...DEFAULT_AUDIT_OPTIONS },
  release: { ...DEFAULT_RELEASE_OPTIONS },
  mcp: {},
  federation: {},
};

const IDENTITY_SOURCES = ["auto", "workload-api", "dev", "none"] as const;

const ID_PATTERN = /^[a-z0-9][a-z0-9_-]{0,62}$/;
const LOG_LEVELS = ["trace", "debug", "info", "warn", "error", "fatal", "silent"] as const;

function readListen(raw: unknown, path: string, defaults: ListenOptions): ListenOptions {
  const s = readSection(raw, path, defaults);
  return {
    host: readString(s, "host", path, defaults.host, { nonEmpty: true }),
    port: readInt(s, "port", path, defaults.port, 0, 65535),
  };
}

/** Validates raw options (file + env merged) and fills defaults; throws ConfigError naming the field. */
export function resolveKernelOptions(raw: unknown): KernelOptions {
  const d = DEFAULT_KERNEL_OPTIONS;
  const s: RawSection = readSection(raw, "", d);
  const dataDir = readString(s, "dataDir", "", d.dataDir, { nonEmpty: true });

  const lim = readSection(s.limits, "limits", d.limits);
  const limits: LimitOptions = {
    maxMessageBytes: readInt(lim, "maxMessageBytes", "limits", d.limits.maxMessageBytes, 1024, 64 * 1024 * 1024),
    maxDeadlineMs: readInt(lim, "maxDeadlineMs", "limits", d.limits.maxDeadlineMs, 1, 24 * 3600_000),
    maxConcurrentStreams: readInt(lim, "maxConcurrentStreams", "limits", d.limits.maxConcurrentStreams, 1, 1_000_000),
    maxHeaderBytes: readInt(lim, "maxHeaderBytes", "limits", d.limits.maxHeaderBytes, 1024, 1024 * 1024),
    maxHeaderCount: readInt(lim, "maxHeaderCount", "limits", d.limits.maxHeaderCount, 8, 10_000),
    ...resolveConnectionLimits(lim),
  };

  const reg = readSection(s.registry, "registry", d.registry);
  const r = d.registry;
  const registry: RegistryOptions = {
    heartbeatTtlMs: readInt(reg, "heartbeatTtlMs", "registry", r.heartbeatTtlMs, 100),
    zombieAfterMs: readInt(reg, "zombieAfterMs", "registry", r.zombieAfterMs, 100),
    reapAfterMs: readInt(reg, "reapAfterMs", "registry", r.reapAfterMs, 100),
    sweepIntervalMs: readInt(reg, "sweepIntervalMs", "registry", r.sweepIntervalMs, 10),
    heartbeatFlushMs: readInt(reg, "heartbeatFlushMs", "registry", r.heartbeatFlushMs, 1, 60_000),
    maxAgentBytes: readInt(reg, "maxAgentBytes", "registry", r.maxAgentBytes, 1024, 16 * 1024 * 1024),
  };
  if (registry.zombieAfterMs <= registry.heartbeatTtlMs) {
    throw new ConfigError("registry.zombieAfterMs must be greater than registry.heartbeatTtlMs");
  }
  if (registry.reapAfterMs <= registry.zombieAfterMs) {
    throw new ConfigError("registry.reapAfterMs must be greater than registry.zombieAfterMs");
  }

  const log = readSection(s.log, "log", d.log);
  const id = readSection(s.identity, "identity", d.identity);
  const source = readString(id, "source", "identity", d.identity.source, { oneOf: IDENTITY_SOURCES }) as IdentitySource;
  const trustDomain = readString(s, "trustDomain", "", d.trustDomain, { pattern: /^[a-z0-9._-]{1,255}$/ });
  // Without TLS there are no credentials to check, so plaintext ("none") admits anonymous callers
  // unless the file says otherwise.
  const anonymous = source === "none" ? { allowAnonymous: true } : {};
  // The embedded issuer's keys already live in the data dir, so a development kernel (what `npm
  // start` runs) keeps its generated pepper there too; a Workload API kernel must keep it elsewhere.
  const socket = readString(id, "socket", "identity", d.identity.socket);
  const development = source === "dev" || source === "none" || (source === "auto" && socket === "");
  const identity: IdentityOptions = {
    source,
    socket,
    devDir: readString(id, "devDir", "identity", d.identity.devDir) || join(dataDir, "dev-identity"),
    apiKeyPepper: readString(id, "apiKeyPepper", "identity", d.identity.apiKeyPepper),
    apiKeyPepperFile: readString(id, "apiKeyPepperFile", "identity", d.identity.apiKeyPepperFile),
    allowPepperBesideDatabase: readBool(id, "allowPepperBesideDatabase", "identity", development),
    spiffe: resolveSpiffePrincipalOptions({ trustDomain, ...(id.spiffe as object | undefined) }, "identity.spiffe"),
    jwt: id.jwt === undefined ? undefined : resolveJwtVerifierOptions(id.jwt, "identity.jwt"),
  };
  if (identity.jwt) identity.jwtInvoke = resolveJwtInvokeOptions(id.jwt, identity.jwt.issuer, "identity.jwt");
  const databasePath = readString(s, "databasePath", "", d.databasePath);
  return {
    edgeId: readString(s, "edgeId", "", d.edgeId, { pattern: ID_PATTERN }),
    dataDir,
    databasePath: databasePath || join(dataDir, "kernel.db"),
    grpc: readListen(s.grpc, "grpc", d.grpc),
    http: readListen(s.http, "http", d.http),
    limits,
    reflection: readBool(s, "reflection", "", d.reflection),
    registry,
    log: {
      level: readString(log, "level", "log", d.log.level, { oneOf: LOG_LEVELS }),
      redactPaths: readStringList(log, "redactPaths", "log", d.log.redactPaths),
    },
    shutdownGraceMs: readInt(s, "shutdownGraceMs", "", d.shutdownGraceMs, 0, 600_000),
    trustDomain,
    identity,
    authn: resolveAuthnOptions({ ...anonymous, ...(s.authn as object | undefined) }, "authn"),
    authz: resolveAuthzOptions({ ...anonymous, ...(s.authz as object | undefined) }, "authz"),
    redis: {
      url: readString(readSection(s.redis, "redis", d.redis), "url", "redis", d.redis.url, {
        pattern: /^$|^rediss?:\/\//,
      }),
    },
    dge: resolveDge(s.dge),
    egress: resolveEgressGuardOptions(
      {
        ...(s.egress as object | undefined),
        dgeEnabled: readBool(readSection(s.dge, "dge", d.dge), "enabled", "dge", d.dge.enabled),
      },
      "egress",
    ),
    routing: resolveRouting(s.routing),
    rateLimit: resolveRateLimitOptions(s.rateLimit ?? {}, "rateLimit"),
    requestSigning: resolveRequestSigningOptions(s.requestSigning ?? {}, "requestSigning"),
    nats: resolveNats(s.nats),
    events: resolveEvents(s.events, readString(s, "edgeId", "", d.edgeId, { pattern: ID_PATTERN })),
    telemetry: resolveTelemetryOptions(s.telemetry ?? {}, "telemetry"),
    admin: resolveAdminOptions(s.admin ?? {}, "admin"),
    mcp: resolveMcpOptions(s.mcp ?? {}, "mcp"),
    federation: resolveFederationOptions(s.federation ?? {}, "federation"),
    dgeServer: s.dgeServer === undefined ? undefined : resolveDgeServerOptions(s.dgeServer, "dgeServer"),
    release: resolveReleaseOptions(s.release ?? {}, "release"),
    audit: resolveAuditOptions(s.audit ?? {}, {
      dataDir,
      edgeId: readString(s, "edgeId", "", d.edgeId, { pattern: ID_PATTERN }),
    }),
  };
}

// Timeouts are bounded below so a typo cannot make the kernel reap every connection at once.
function resolveConnectionLimits(lim: RawSection): ConnectionLimits {
  const d = DEFAULT_KERNEL_OPTIONS.limits;
  const ms = (key: keyof LimitOptions, min: number) => readInt(lim, key, "limits", d[key], min, 24 * 3600_000);
  return {
    maxConnections: readInt(lim, "maxConnections", "limits", d.maxConnections, 0, 10_000_000),
    maxConnectionsPerIp: readInt(lim, "maxConnectionsPerIp", "limits", d.maxConnectionsPerIp, 1, 10_000_000),
    tlsHandshakeTimeoutMs: ms("tlsHandshakeTimeoutMs", 100),
    headersTimeoutMs: ms("headersTimeoutMs", 100),
    requestTimeoutMs: ms("requestTimeoutMs", 100),
    keepAliveTimeoutMs: ms("keepAliveTimeoutMs", 100),
    sessionIdleTimeoutMs: ms("sessionIdleTimeoutMs", 100),
    keepalivePingIntervalMs: ms("keepalivePingIntervalMs", 100),
    pingTimeoutMs: ms("pingTimeoutMs", 100),
    maxConnectionAgeMs: readInt(lim, "maxConnectionAgeMs", "limits", d.maxConnectionAgeMs, 0, 30 * 24 * 3600_000),
  };
}

// The limits resolved inline in resolveKernelOptions are sizes and the deadline cap; these are the rest.
type ConnectionLimits = Omit<
  LimitOptions,
  "maxMessageBytes" | "maxDeadlineMs" | "maxConcurrentStreams" | "maxHeaderBytes" | "maxHeaderCount"
>;

function resolveDge(raw: unknown): KernelOptions["dge"] {
  const d = DEFAULT_KERNEL_OPTIONS.dge;
  const s = readSection(raw, "dge", d);
  const url = readString(s, "url", "dge", d.url, { pattern: /^$|^https?:\/\// });
  const enabled = readBool(s, "enabled", "dge", d.enabled);
  // The embedded reference DGE gets its signing key at start; a remote one needs configured keys.
  const client = resolveDgeClientOptions(
    {
      url: url || "http://127.0.0.1:0",
      protocol: s.protocol ?? d.protocol,
      keys: url ? (s.keys ?? {}) : { embedded: "x".repeat(32) },
      maxSkewMs: s.maxSkewMs ?? d.maxSkewMs,
    },
    "dge",
  );
  if (url && s.policies !== undefined)
    throw new ConfigError(
      "dge.policies applies to the embedded DGE only; with dge.url set, that DGE owns the policies",
    );
  return { enabled, client, embedded: url === "", policies: resolveDgePoliciesOptions(s.policies, "dge.policies") };
}

function resolveNats(raw: unknown): KernelOptions["nats"] {
  const d = DEFAULT_KERNEL_OPTIONS.nats;
  const s = readSection(raw, "nats", d);
  return {
    url: readString(s, "url", "nats", d.url, { pattern: /^$|^(nats|tls):\/\// }),
    leaf: readString(s, "leaf", "nats", d.leaf, { oneOf: ["auto", "off"] }) as "auto" | "off",
    hubUrl: readString(s, "hubUrl", "nats", d.hubUrl, { pattern: /^$|^(nats-leaf|tls|nats):\/\// }),
    leafLogPort: readInt(s, "leafLogPort", "nats", d.leafLogPort, 0, 65535),
  };
}

function resolveEvents(raw: unknown, edgeId: string): KernelOptions["events"] {
  const { service, ...rest } = (raw ?? {}) as Record<string, unknown>;
  return {
    ...resolveEventBusOptions({ edgeId, ...rest }, "events"),
    service: resolveEventBusServiceOptions(service ?? {}, "events.service"),
  };
}

function resolveRouting(raw: unknown): KernelOptions["routing"] {
  const { service, ...rest } = (raw ?? {}) as Record<string, unknown>;
  return {
    ...resolveRoutingOptions(rest, "routing"),
    service: resolveRoutingServiceOptions(service ?? {}, "routing.service"),
  };
}
