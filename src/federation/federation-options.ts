import {
  ConfigError,
  readInt,
  readObject,
  readOptionalString,
  readSection,
  readString,
  readStringList,
  TENANT_PATTERN,
} from "../common/index.js";
import { DEFAULT_DELEGATION_OPTIONS } from "./delegation.js";
import type { PeerPin } from "./peer-registry.js";

/** Federation with peer kernels (docs/federation.md). */
export interface FederationOptions {
  /** gRPC endpoint (host:port) peers are told to use; empty: the bound gRPC address. @default "" */
  advertiseGrpc: string;
  /** HTTP endpoint URL peers are told to use; empty: https://<bound HTTP address>. @default "" */
  advertiseHttp: string;
  /** Tenants this kernel federates (announced in its descriptor). @default [] */
  tenants: string[];
  /** spiffe_refresh_hint of the bundle this kernel serves, seconds. @default 300 */
  bundleRefreshHintSeconds: number;
  /** Lifetime of a signed descriptor. @default 300000 */
  descriptorTtlMs: number;
  /** How long a handshake's hello answer waits for its finish. @default 30000 */
  handshakeTtlMs: number;
  /** Open handshakes and remembered nonces at most. @default 10000 */
  maxPendingHandshakes: number;
  /** Floor of a peer bundle refresh interval, whatever its hint says. @default 1000 */
  minRefreshIntervalMs: number;
  /** Ceiling of a peer bundle refresh interval. @default 3600000 */
  maxRefreshIntervalMs: number;
  /** Budget of one bundle fetch. @default 10000 */
  fetchTimeoutMs: number;
  /** How often the registry looks for changes made by `nops-kernel peers` beside the running kernel. @default 1000 */
  reloadIntervalMs: number;
  /** Peers pinned by configuration; added at start when missing (never overwritten). @default [] */
  peers: PeerPin[];
  /**
   * Sync interval of each peer catalog watch (the peer's routable agents per agreed tenant): how often
   * the peer sends coalesced load/heartbeat changes and a SYNCED marker; also the retry delay of a
   * failed watch. @default 2000
   */
  catalogRefreshMs: number;
  /**
   * A peer catalog whose last SYNCED is older than this is not routed to (and the link counts as
   * down); a watch silent this long is reopened. @default 6000
   */
  catalogStalenessMs: number;
  /**
   * Lifetime of the delegations this kernel issues, seconds (at most the peers' 120 s limit); a
   * catalog watch is reopened with a fresh one at 2/3 of it. @default 30
   */
  delegationTtlSeconds: number;
  /** Kernels a call may cross; a call that arrived over this many hops is never forwarded again. @default 1 */
  maxHops: number;
  /**
   * Delegations remembered against replay until they expire, at most; beyond it a peer's delegation
   * is refused RESOURCE_EXHAUSTED (retry later) rather than letting the cache grow. @default 100000
   */
  maxRememberedDelegations: number;
}

/** Defaults of FederationOptions. */
export const DEFAULT_FEDERATION_OPTIONS: Readonly<FederationOptions> = {
  advertiseGrpc: "",
  advertiseHttp: "",
  tenants: [],
  bundleRefreshHintSeconds: 300,
  descriptorTtlMs: 300_000,
  handshakeTtlMs: 30_000,
  maxPendingHandshakes: 10_000,
  minRefreshIntervalMs: 1000,
  maxRefreshIntervalMs: 3_600_000,
  fetchTimeoutMs: 10_000,
  reloadIntervalMs: 1000,
  peers: [],
  catalogRefreshMs: 2000,
  catalogStalenessMs: 6000,
  delegationTtlSeconds: 30,
  maxHops: 1,
  maxRememberedDelegations: 100_000,
};

function readClause(raw: unknown, path: string): { tenants: string[]; capabilities: string[] } {
  const c = readSection(raw, path, { tenants: [], capabilities: [] });
  return {
    tenants: readStringList(c, "tenants", path, []),
    capabilities: readStringList(c, "capabilities", path, []),
  };
}

const PIN_KEYS = {
  spiffeId: "",
  grpcEndpoint: "",
  httpEndpoint: "",
  bundleEndpointUrl: "",
  bundleEndpointProfile: "",
  bundle: "",
  bundleSha256: "",
  agreement: {},
};

function readPin(raw: unknown, path: string): PeerPin {
  const p = readSection(readObject(raw, path), path, PIN_KEYS);
  const agreement = readSection(p.agreement, `${path}.agreement`, { inbound: {}, outbound: {} });
  const pin: PeerPin = {
    spiffeId: readString(p, "spiffeId", path, "", { nonEmpty: true }),
    grpcEndpoint: readString(p, "grpcEndpoint", path, "", { nonEmpty: true }),
    httpEndpoint: readString(p, "httpEndpoint", path, "", { nonEmpty: true }),
    agreement: {
      inbound: readClause(agreement.inbound, `${path}.agreement.inbound`),
      outbound: readClause(agreement.outbound, `${path}.agreement.outbound`),
    },
  };
  const optional = ["bundleEndpointUrl", "bundleEndpointProfile", "bundle", "bundleSha256"] as const;
  for (const key of optional) {
    const v = readOptionalString(p, key, path, { nonEmpty: true });
    if (v !== undefined) pin[key] = v;
  }
  if (!pin.bundle && !pin.bundleSha256) throw new ConfigError(`${path} needs bundle or bundleSha256`);
  return pin;
}

/** Validates a partial config over the defaults; throws ConfigError naming the field. */
export function resolveFederationOptions(input: unknown, path = "federation"): FederationOptions {
  const d = DEFAULT_FEDERATION_OPTIONS;
  const s = readSection(input, path, d);
  const tenants = readStringList(s, "tenants", path, d.tenants);
  tenants.forEach((t, i) => {
    if (!TENANT_PATTERN.test(t)) throw new ConfigError(`${path}.tenants[${i}] is not a tenant id`);
  });
  if (s.peers !== undefined && !Array.isArray(s.peers)) throw new ConfigError(`${path}.peers must be a list`);
  const options: FederationOptions = {
    advertiseGrpc: readString(s, "advertiseGrpc", path, d.advertiseGrpc, { pattern: /^$|^[^\s/]+:\d{1,5}$/ }),
    advertiseHttp: readString(s, "advertiseHttp", path, d.advertiseHttp, { pattern: /^$|^https:\/\/\S+$/ }),
    tenants,
    bundleRefreshHintSeconds: readInt(s, "bundleRefreshHintSeconds", path, d.bundleRefreshHintSeconds, 1, 86_400),
    descriptorTtlMs: readInt(s, "descriptorTtlMs", path, d.descriptorTtlMs, 10_000, 86_400_000),
    handshakeTtlMs: readInt(s, "handshakeTtlMs", path, d.handshakeTtlMs, 1000, 600_000),
    maxPendingHandshakes: readInt(s, "maxPendingHandshakes", path, d.maxPendingHandshakes, 1, 1_000_000),
    minRefreshIntervalMs: readInt(s, "minRefreshIntervalMs", path, d.minRefreshIntervalMs, 100, 86_400_000),
    maxRefreshIntervalMs: readInt(s, "maxRefreshIntervalMs", path, d.maxRefreshIntervalMs, 1000, 7 * 86_400_000),
    fetchTimeoutMs: readInt(s, "fetchTimeoutMs", path, d.fetchTimeoutMs, 100, 600_000),
    reloadIntervalMs: readInt(s, "reloadIntervalMs", path, d.reloadIntervalMs, 100, 600_000),
    peers: ((s.peers as unknown[] | undefined) ?? []).map((p, i) => readPin(p, `${path}.peers[${i}]`)),
    // The range of WatchAgents.sync_interval_ms.
    catalogRefreshMs: readInt(s, "catalogRefreshMs", path, d.catalogRefreshMs, 100, 60_000),
    catalogStalenessMs: readInt(s, "catalogStalenessMs", path, d.catalogStalenessMs, 200, 3_600_000),
    delegationTtlSeconds: readInt(
      s,
      "delegationTtlSeconds",
      path,
      d.delegationTtlSeconds,
      2,
      DEFAULT_DELEGATION_OPTIONS.maxTtlSeconds,
    ),
    maxHops: readInt(s, "maxHops", path, d.maxHops, 1, 8),
    maxRememberedDelegations: readInt(s, "maxRememberedDelegations", path, d.maxRememberedDelegations, 1, 10_000_000),
  };
  if (options.maxRefreshIntervalMs < options.minRefreshIntervalMs) {
    throw new ConfigError(`${path}.maxRefreshIntervalMs must be >= ${path}.minRefreshIntervalMs`);
  }
  if (options.catalogStalenessMs <= options.catalogRefreshMs) {
    throw new ConfigError(`${path}.catalogStalenessMs must be > ${path}.catalogRefreshMs`);
  }
  return options;
}
