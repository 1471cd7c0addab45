import { EDGE_ID_PATTERN, KernelError, TENANT_PATTERN, type Clock } from "../common/index.js";
import type { Db } from "../store/index.js";
import type { AuditLog } from "../audit/index.js";
import type { Logger } from "../telemetry/index.js";
import { parseSpiffeId, type FederatedBundles, type X509Bundle } from "../identity/index.js";
import {
  bundleFingerprint,
  bundleHasAuthority,
  normaliseFingerprint,
  parseSpiffeBundle,
  type SpiffeBundle,
} from "./spiffe-bundle.js";

/** What may cross one way: tenants and capabilities ("*" for any capability). */
export interface AgreementClause {
  tenants: string[];
  capabilities: string[];
}

/** What may cross in each direction between this kernel and a peer. */
export interface Agreement {
  /** Calls from the peer into this kernel. */
  inbound: AgreementClause;
  /** Calls from this kernel to the peer. */
  outbound: AgreementClause;
}

/** Where a peer stands. */
export type PeerState = "pending" | "established" | "quarantined";

/** How a peer's bundle endpoint authenticates (SPIFFE Federation §5). */
export type BundleEndpointProfile = "https_spiffe" | "https_web";

/** One pinned peer kernel. */
export interface PeerRecord {
  spiffeId: string;
  trustDomain: string;
  grpcEndpoint: string;
  httpEndpoint: string;
  bundleEndpointUrl: string;
  bundleEndpointProfile: BundleEndpointProfile;
  agreement: Agreement;
  state: PeerState;
  quarantineReason: string;
  /** SHA-256 of one authority the first bundle must hold (fingerprint bootstrap), else "". */
  pinnedFingerprint: string;
  /** The bundle now trusted, undefined until known. */
  bundle?: SpiffeBundle;
  /** The bundle document as received (SPIFFE bundle JSON or PEM). */
  bundleText?: string;
  bundleRefreshedAt: number;
  establishedAt: number;
  createdAt: number;
  /**
   * The peer's kernel id (its edge id) from the descriptor it signed at its last handshake, "" until
   * then: the edge of its event link (docs/events.md, "Kernel -> kernel events").
   */
  kernelId: string;
}

/** Input of `add`: the operator's pin. */
export interface PeerPin {
  spiffeId: string;
  grpcEndpoint: string;
  httpEndpoint: string;
  bundleEndpointUrl?: string;
  bundleEndpointProfile?: string;
  /** Initial bundle (SPIFFE bundle JSON or PEM), or */
  bundle?: string;
  /** the SHA-256 fingerprint of one of its authorities. */
  bundleSha256?: string;
  agreement?: Partial<{ inbound: Partial<AgreementClause>; outbound: Partial<AgreementClause> }>;
}

/** A pin or registry change the caller got wrong; `field` names the input. */
export class PeerRegistryError extends KernelError {
  override name = "PeerRegistryError";
  constructor(
    readonly field: string,
    readonly problem: string,
    readonly kind: "invalid" | "exists" | "not-found" = "invalid",
  ) {
    super(`${field}: ${problem}`);
  }
}

/** The persisted, audited registry of peers; also the source of the federated bundles TLS trusts. */
export interface PeerRegistry extends FederatedBundles {
  add(pin: PeerPin, actor: string): PeerRecord;
  list(): PeerRecord[];
  get(spiffeId: string): PeerRecord | undefined;
  /** The peer pinned for a trust domain (at most one). */
  byTrustDomain(trustDomain: string): PeerRecord | undefined;
  remove(spiffeId: string, actor: string): void;
  /** Replaces what may cross between this kernel and the peer (validated like `add`; audited). */
  setAgreement(
    spiffeId: string,
    agreement: Partial<{ inbound: Partial<AgreementClause>; outbound: Partial<AgreementClause> }>,
    actor: string,
  ): PeerRecord;
  /** Stops trusting the peer's bundle (reason recorded and audited). */
  quarantine(spiffeId: string, reason: string, actor: string): PeerRecord;
  /** Ends a quarantine: the peer is pending again until its next handshake. */
  lift(spiffeId: string, actor: string): PeerRecord;
  /**
   * Records a completed handshake and the kernel id the peer's verified descriptor carried (kept
   * as it was when not given).
   */
  establish(spiffeId: string, actor: string, kernelId?: string): PeerRecord;
  /**
   * Replaces the peer's trusted bundle with one obtained over an authenticated channel. A bundle
   * with a lower sequence than the one held is refused (rollback); the same sequence is a no-op.
   */
  updateBundle(spiffeId: string, text: string, actor: string): { changed: boolean; record: PeerRecord };
  /** Calls `listener` after any change of a peer (removal included), with its SPIFFE ID. */
  onPeerChange(listener: (spiffeId: string) => void): () => void;
  /**
   * Picks up changes another process committed (`nops-kernel peers add|remove` beside a running
   * kernel): cheap when nothing changed (SQLite's data_version). Returns whether anything did.
   */
  reload(): boolean;
}

interface Row {
  spiffe_id: string;
  trust_domain: string;
  grpc_endpoint: string;
  http_endpoint: string;
  bundle_endpoint_url: string;
  bundle_endpoint_profile: string;
  agreement: string;
  state: string;
  quarantine_reason: string;
  pinned_fingerprint: string;
  bundle: string | null;
  bundle_sequence: number;
  bundle_refresh_hint_s: number;
  bundle_refreshed_at: number;
  established_at: number;
  created_at: number;
  updated_at: number;
  kernel_id: string;
}

const HOST_PORT = /^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):\d{1,5}$/;
const CAPABILITY = /^(\*|[a-z][a-z0-9._-]{0,63})$/;

function readClause(input: Partial<AgreementClause> | undefined, field: string): AgreementClause {
  const tenants = input?.tenants ?? [];
  const capabilities = input?.capabilities ?? [];
  tenants.forEach((t, i) => {
    if (!TENANT_PATTERN.test(t)) throw new PeerRegistryError(`${field}.tenants[${i}]`, "is not a tenant id");
  });
  capabilities.forEach((c, i) => {
    if (!CAPABILITY.test(c)) throw new PeerRegistryError(`${field}.capabilities[${i}]`, "is not a capability name");
  });
  return { tenants: [...new Set(tenants)], capabilities: [...new Set(capabilities)] };
}

function checkUrl(value: string, field: string): void {
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    throw new PeerRegistryError(field, "is not a URL");
  }
  if (url.protocol !== "https:") throw new PeerRegistryError(field, "must be an https:// URL");
}

/** Creates the registry over `federation_peers`; every change is audited in its own transaction. */
export function createPeerRegistry(deps: { db: Db; audit: AuditLog; clock: Clock; logger: Logger }): PeerRegistry {
  const { db, audit, clock } = deps;
  const log = deps.logger.child({ component: "federation-peers" });
  const all = db.prepare<[], Row>("SELECT * FROM federation_peers ORDER BY spiffe_id");
  const one = db.prepare<[string], Row>("SELECT * FROM federation_peers WHERE spiffe_id = ?");
  const byTd = db.prepare<[string], Row>("SELECT * FROM federation_peers WHERE trust_domain = ?");
  const insert = db.prepare(
    `INSERT INTO federation_peers (spiffe_id, trust_domain, grpc_endpoint, http_endpoint, bundle_endpoint_url,
       bundle_endpoint_profile, agreement, state, pinned_fingerprint, bundle, bundle_sequence, bundle_refresh_hint_s,
       bundle_refreshed_at, created_at, updated_at)
     VALUES (@spiffe_id, @trust_domain, @grpc_endpoint, @http_endpoint, @bundle_endpoint_url, @bundle_endpoint_profile,
       @agreement, 'pending', @pinned_fingerprint, @bundle, @bundle_sequence, @bundle_refresh_hint_s, @now, @now, @now)`,
  );
  const del = db.prepare<[string]>("DELETE FROM federation_peers WHERE spiffe_id = ?");
  const setAgreementStmt = db.prepare<[string, number, string]>(
    "UPDATE federation_peers SET agreement = ?, updated_at = ? WHERE spiffe_id = ?",
  );
  const setState = db.prepare<[string, string, number, number, string]>(
    "UPDATE federation_peers SET state = ?, quarantine_reason = ?, established_at = ?, updated_at = ? WHERE spiffe_id = ?",
  );
  const setKernelId = db.prepare<[string, string]>("UPDATE federation_peers SET kernel_id = ? WHERE spiffe_id = ?");
  const setBundle = db.prepare<[string, number, number, number, number, string]>(
    `UPDATE federation_peers SET bundle = ?, bundle_sequence = ?, bundle_refresh_hint_s = ?, bundle_refreshed_at = ?,
       pinned_fingerprint = '', updated_at = ? WHERE spiffe_id = ?`,
  );

  const toRecord = (r: Row): PeerRecord => {
    let bundle: SpiffeBundle | undefined;
    if (r.bundle !== null) {
      try {
        bundle = parseSpiffeBundle(r.trust_domain, r.bundle);
      } catch (err) {
        // Stored only after parsing; a row that no longer parses (e.g. an authority expired) is not trusted.
        log.error({ err, peer: r.spiffe_id }, "stored peer bundle cannot be parsed; not trusted");
      }
    }
    return {
      spiffeId: r.spiffe_id,
      trustDomain: r.trust_domain,
      grpcEndpoint: r.grpc_endpoint,
      httpEndpoint: r.http_endpoint,
      bundleEndpointUrl: r.bundle_endpoint_url,
      bundleEndpointProfile: r.bundle_endpoint_profile as BundleEndpointProfile,
      agreement: JSON.parse(r.agreement) as Agreement,
      state: r.state as PeerState,
      quarantineReason: r.quarantine_reason,
      pinnedFingerprint: r.pinned_fingerprint,
      ...(bundle ? { bundle, bundleText: r.bundle ?? undefined } : {}),
      bundleRefreshedAt: r.bundle_refreshed_at,
      establishedAt: r.established_at,
      createdAt: r.created_at,
      kernelId: r.kernel_id,
    };
  };

  // Records (with their parsed bundles) and the trusted bundles are recomputed on change only: the
  // peer link reads a record on every call a peer makes, TLS and verifyPeer the bundles per handshake.
  let records = new Map<string, PeerRecord>();
  let trusted: X509Bundle[] = [];
  const bundleListeners = new Set<() => void>();
  const peerListeners = new Set<(id: string) => void>();
  const recompute = () => {
    records = new Map(all.all().map((r) => [r.spiffe_id, toRecord(r)]));
    trusted = [...records.values()].filter((p) => p.state !== "quarantined" && p.bundle).map((p) => p.bundle!.x509);
  };
  recompute();
  // data_version moves only when another connection commits (SQLite PRAGMA data_version).
  let dataVersion = db.pragma("data_version", { simple: true }) as number;
  let snapshot = new Map(all.all().map((r) => [r.spiffe_id, r.updated_at]));
  const changed = (spiffeId: string): void => {
    // Inside a caller's transaction (a hub command applies its change in its own): once it has
    // committed or rolled back, so neither the records nor a listener see a change that did not stand.
    if (db.inTransaction) return queueMicrotask(() => changed(spiffeId));
    snapshot = new Map(all.all().map((r) => [r.spiffe_id, r.updated_at]));
    recompute();
    for (const l of [...bundleListeners]) l();
    for (const l of [...peerListeners]) l(spiffeId);
  };
  // A write that changes no trust (a refresh that brought the same bundle): its record only, no listener.
  const refreshRecord = (spiffeId: string): void => {
    if (db.inTransaction) return queueMicrotask(() => refreshRecord(spiffeId));
    const row = one.get(spiffeId);
    if (!row) return;
    records.set(spiffeId, toRecord(row));
    snapshot.set(spiffeId, row.updated_at);
  };
  const need = (spiffeId: string): Row => {
    const row = one.get(spiffeId);
    if (!row) throw new PeerRegistryError("spiffe_id", `no peer ${spiffeId}`, "not-found");
    return row;
  };
  const record = (
    action: string,
    actor: string,
    spiffeId: string,
    outcome: string,
    details?: Record<string, unknown>,
  ) => audit.append({ actor, action, tenant: "", resource: `peer/${spiffeId}`, outcome, details });

  const registry: PeerRegistry = {
    reload() {
      const version = db.pragma("data_version", { simple: true }) as number;
      if (version === dataVersion) return false;
      dataVersion = version;
      const rows = new Map(all.all().map((r) => [r.spiffe_id, r.updated_at]));
      const touched = [...new Set([...rows.keys(), ...snapshot.keys()])].filter(
        (id) => rows.get(id) !== snapshot.get(id),
      );
      for (const id of touched) changed(id);
      return touched.length > 0;
    },
    current: () => trusted,
    onChange(listener) {
      bundleListeners.add(listener);
      return () => void bundleListeners.delete(listener);
    },
    onPeerChange(listener) {
      peerListeners.add(listener);
      return () => void peerListeners.delete(listener);
    },
    add(pin, actor) {
      let id;
      try {
        id = parseSpiffeId(pin.spiffeId);
      } catch {
        throw new PeerRegistryError("spiffe_id", "is not a SPIFFE ID");
      }
      if (id.path === "") throw new PeerRegistryError("spiffe_id", "must name a kernel workload, not a trust domain");
      if (!HOST_PORT.test(pin.grpcEndpoint)) throw new PeerRegistryError("grpc_endpoint", "must be host:port");
      checkUrl(pin.httpEndpoint, "http_endpoint");
      const bundleEndpointUrl = pin.bundleEndpointUrl || `${pin.httpEndpoint.replace(/\/+$/, "")}/federation/bundle`;
      checkUrl(bundleEndpointUrl, "bundle_endpoint_url");
      const profile = pin.bundleEndpointProfile || "https_spiffe";
      if (profile !== "https_spiffe" && profile !== "https_web") {
        throw new PeerRegistryError("bundle_endpoint_profile", "must be https_spiffe or https_web");
      }
      const agreement: Agreement = {
        inbound: readClause(pin.agreement?.inbound, "agreement.inbound"),
        outbound: readClause(pin.agreement?.outbound, "agreement.outbound"),
      };
      let bundle: SpiffeBundle | undefined;
      let fingerprint = "";
      if (pin.bundle) {
        try {
          bundle = parseSpiffeBundle(id.trustDomain, pin.bundle);
        } catch (err) {
          throw new PeerRegistryError("bundle", err instanceof Error ? err.message : "cannot be parsed");
        }
        if (pin.bundleSha256) {
          const fp = normaliseFingerprint(pin.bundleSha256);
          if (!fp || !bundleHasAuthority(bundle.x509, fp)) {
            throw new PeerRegistryError("bundle_sha256", "matches no authority of the given bundle");
          }
        }
      } else if (pin.bundleSha256) {
        fingerprint = normaliseFingerprint(pin.bundleSha256) ?? "";
        if (!fingerprint) throw new PeerRegistryError("bundle_sha256", "must be 64 hex digits (colons allowed)");
      } else {
        throw new PeerRegistryError("bundle", "give the peer's initial bundle or its SHA-256 fingerprint");
      }
      if (one.get(id.id)) throw new PeerRegistryError("spiffe_id", `peer ${id.id} is already pinned`, "exists");
      if (byTd.get(id.trustDomain)) {
        throw new PeerRegistryError(
          "spiffe_id",
          `a peer of trust domain ${id.trustDomain} is already pinned`,
          "exists",
        );
      }
      const now = clock.now();
      db.transaction(() => {
        insert.run({
          spiffe_id: id.id,
          trust_domain: id.trustDomain,
          grpc_endpoint: pin.grpcEndpoint,
          http_endpoint: pin.httpEndpoint,
          bundle_endpoint_url: bundleEndpointUrl,
          bundle_endpoint_profile: profile,
          agreement: JSON.stringify(agreement),
          pinned_fingerprint: fingerprint,
          bundle: pin.bundle ?? null,
          bundle_sequence: bundle?.sequence ?? 0,
          bundle_refresh_hint_s: bundle?.refreshHintSeconds ?? 0,
          now,
        });
        record("federation.peer.add", actor, id.id, "ok", {
          bundle: bundle ? bundleFingerprint(bundle.x509) : `pinned-sha256:${fingerprint}`,
          agreement,
        });
      })();
      log.info({ peer: id.id, actor }, "federation peer pinned");
      changed(id.id);
      return toRecord(need(id.id));
    },
    list: () => [...records.values()],
    get: (spiffeId) => records.get(spiffeId),
    byTrustDomain: (trustDomain) => [...records.values()].find((p) => p.trustDomain === trustDomain),
    remove(spiffeId, actor) {
      need(spiffeId);
      db.transaction(() => {
        del.run(spiffeId);
        record("federation.peer.remove", actor, spiffeId, "ok");
      })();
      log.info({ peer: spiffeId, actor }, "federation peer removed");
      changed(spiffeId);
    },
    setAgreement(spiffeId, input, actor) {
      need(spiffeId);
      const agreement: Agreement = {
        inbound: readClause(input.inbound, "agreement.inbound"),
        outbound: readClause(input.outbound, "agreement.outbound"),
      };
      db.transaction(() => {
        setAgreementStmt.run(JSON.stringify(agreement), clock.now(), spiffeId);
        record("federation.peer.agreement", actor, spiffeId, "ok", { agreement });
      })();
      log.info({ peer: spiffeId, actor }, "federation peer agreement replaced");
      changed(spiffeId);
      return toRecord(need(spiffeId));
    },
    quarantine(spiffeId, reason, actor) {
      need(spiffeId);
      db.transaction(() => {
        setState.run("quarantined", reason.slice(0, 500), 0, clock.now(), spiffeId);
        record("federation.peer.quarantine", actor, spiffeId, "ok", { reason: reason.slice(0, 500) });
      })();
      log.warn({ peer: spiffeId, reason, actor }, "federation peer quarantined");
      changed(spiffeId);
      return toRecord(need(spiffeId));
    },
    lift(spiffeId, actor) {
      const row = need(spiffeId);
      if (row.state !== "quarantined") return toRecord(row);
      db.transaction(() => {
        setState.run("pending", "", 0, clock.now(), spiffeId);
        record("federation.peer.lift", actor, spiffeId, "ok");
      })();
      changed(spiffeId);
      return toRecord(need(spiffeId));
    },
    establish(spiffeId, actor, kernelId) {
      const row = need(spiffeId);
      if (row.state === "quarantined") throw new PeerRegistryError("spiffe_id", `peer ${spiffeId} is quarantined`);
      if (kernelId !== undefined && !EDGE_ID_PATTERN.test(kernelId))
        throw new PeerRegistryError("kernel_id", `must match ${EDGE_ID_PATTERN.source}`);
      const now = clock.now();
      db.transaction(() => {
        setState.run("established", "", now, now, spiffeId);
        if (kernelId !== undefined) setKernelId.run(kernelId, spiffeId);
        record("federation.peer.establish", actor, spiffeId, "ok", { kernelId: kernelId ?? row.kernel_id });
      })();
      changed(spiffeId);
      return toRecord(need(spiffeId));
    },
    updateBundle(spiffeId, text, actor) {
      const row = need(spiffeId);
      const bundle = parseSpiffeBundle(row.trust_domain, text);
      if (row.bundle !== null && bundle.sequence < row.bundle_sequence) {
        throw new PeerRegistryError(
          "bundle",
          `spiffe_sequence ${bundle.sequence} is older than the trusted ${row.bundle_sequence}`,
        );
      }
      if (row.pinned_fingerprint && !bundleHasAuthority(bundle.x509, row.pinned_fingerprint)) {
        throw new PeerRegistryError("bundle", "holds no authority with the pinned SHA-256 fingerprint");
      }
      const now = clock.now();
      const previous = row.bundle === null ? undefined : toRecord(row).bundle;
      const same = previous && bundleFingerprint(previous.x509) === bundleFingerprint(bundle.x509);
      db.transaction(() => {
        setBundle.run(text, bundle.sequence, Math.round(bundle.refreshHintSeconds ?? 0), now, now, spiffeId);
        if (!same) {
          record("federation.peer.bundle", actor, spiffeId, "ok", {
            sequence: bundle.sequence,
            fingerprint: bundleFingerprint(bundle.x509),
          });
        }
      })();
      if (!same) {
        log.info({ peer: spiffeId, sequence: bundle.sequence }, "federation peer bundle updated");
        changed(spiffeId);
      } else refreshRecord(spiffeId);
      return { changed: !same, record: toRecord(need(spiffeId)) };
    },
  };
  return registry;
}
