import type { ConnectionOptions } from "node:tls";
import { create } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient, type HandlerContext, type ServiceImpl } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport } from "@connectrpc/connect-node";
import {
  FederationService,
  PeerSchema,
  PeerState as PeerStateProto,
  type Peer,
  type SignedDescriptor,
} from "../../gen/nops/federation/v1/federation_pb.js";
import {
  ConfigError,
  alreadyExists,
  failedPrecondition,
  invalidArgument,
  notFound,
  permissionDenied,
  resourceExhausted,
  unauthenticated,
  unavailable,
  type Clock,
  type DependencyStatus,
  type TimerHandle,
} from "../common/index.js";
import type { Db } from "../store/index.js";
import type { AuditLog } from "../audit/index.js";
import type { Logger } from "../telemetry/index.js";
import type { X509Source } from "../identity/index.js";
import { signDescriptor } from "./descriptor.js";
import { createHandshakeResponder, initiateHandshake, type HandshakeDeps } from "./handshake.js";
import { FederationRefusal, type SigningIdentity } from "./kernel-jws.js";
import { createPeerRegistry, PeerRegistryError, type PeerRecord, type PeerRegistry } from "./peer-registry.js";
import { bundleFingerprint, encodeSpiffeBundle } from "./spiffe-bundle.js";
import { BundleFetchError, fetchPeerBundle } from "./bundle-fetcher.js";
import type { FederationOptions } from "./federation-options.js";
import { createDelegations, DEFAULT_DELEGATION_OPTIONS, type Delegations } from "./delegation.js";

/** What the federation needs from the kernel's identity once it exists. */
export interface FederationIdentity {
  source: X509Source;
  /** node:tls options presenting our SVID and accepting only `allowedIds` as the server. */
  clientTls(allowedIds: readonly string[]): ConnectionOptions;
}

/** A plain HTTP route (the server's HttpRoute shape). */
export type FederationRoute = (
  req: { method?: string; url?: string },
  res: { writeHead(status: number, headers?: Record<string, string>): unknown; end(body: string): unknown },
) => void;

/** The federation capability as the kernel wires it. */
export interface Federation {
  /** The peer registry; also the federated bundles TLS trusts (pass to the identity before it starts). */
  readonly registry: PeerRegistry;
  /** Delegations this kernel issues for forwarded calls and verifies on calls peers forward. */
  readonly delegations: Delegations;
  /** This kernel's SPIFFE ID, once it has a workload identity. */
  spiffeId(): string | undefined;
  /** Gives the federation the kernel's identity (after the identity stage). */
  attachIdentity(identity: FederationIdentity): void;
  /** Records the bound endpoints (after listen) for the descriptor, unless advertised ones are configured. */
  setEndpoints(grpc: string, http: string): void;
  /** The FederationService handler. */
  service(actorOf: (ctx: HandlerContext) => string): ServiceImpl<typeof FederationService>;
  /** GET /federation/bundle (SPIFFE bundle endpoint), GET /federation/discover. */
  routes(): Record<string, FederationRoute>;
  /** RPC paths the roadmap's plain paths stand for: POST /federation/handshake. */
  rpcAliases(): Record<string, string>;
  /** Runs the handshake with a pinned peer as initiator. */
  connect(spiffeId: string, transport: "grpc" | "connect", signal?: AbortSignal): Promise<PeerRecord>;
  /** Dependency probe "federation-peers": degraded while a peer is quarantined or its bundle unreachable. */
  probe(): DependencyStatus;
  /** Starts refreshing peer bundles on their hints. */
  start(): void;
  stop(): void;
}

/** Dependencies of the federation. */
export interface FederationDeps {
  db: Db;
  audit: AuditLog;
  clock: Clock;
  logger: Logger;
}

const STATE: Record<PeerRecord["state"], PeerStateProto> = {
  pending: PeerStateProto.PENDING,
  established: PeerStateProto.ESTABLISHED,
  quarantined: PeerStateProto.QUARANTINED,
};

/** A registry record as the contract's Peer. */
export function peerToProto(p: PeerRecord): Peer {
  return create(PeerSchema, {
    spiffeId: p.spiffeId,
    trustDomain: p.trustDomain,
    grpcEndpoint: p.grpcEndpoint,
    httpEndpoint: p.httpEndpoint,
    bundleEndpointUrl: p.bundleEndpointUrl,
    bundleEndpointProfile: p.bundleEndpointProfile,
    agreement: { inbound: p.agreement.inbound, outbound: p.agreement.outbound },
    state: STATE[p.state],
    quarantineReason: p.quarantineReason,
    bundleFingerprint: p.bundle ? bundleFingerprint(p.bundle.x509) : p.pinnedFingerprint,
    bundleSequence: BigInt(p.bundle?.sequence ?? 0),
    ...(p.bundleRefreshedAt ? { bundleRefreshedAt: timestampFromMs(p.bundleRefreshedAt) } : {}),
    ...(p.establishedAt ? { establishedAt: timestampFromMs(p.establishedAt) } : {}),
    createdAt: timestampFromMs(p.createdAt),
    kernelId: p.kernelId,
  });
}

function toConnectError(err: unknown): unknown {
  if (err instanceof PeerRegistryError) {
    if (err.kind === "exists") return alreadyExists("peer", err.field, err.problem);
    if (err.kind === "not-found") return notFound("peer");
    return invalidArgument(err.field, err.problem);
  }
  if (err instanceof FederationRefusal) {
    switch (err.code) {
      case "permission-denied":
        return permissionDenied(err.reason);
      case "unauthenticated":
        return unauthenticated(err.reason);
      case "invalid-argument":
        return invalidArgument("request", err.reason);
      case "failed-precondition":
        return failedPrecondition(err.reason);
      case "resource-exhausted":
        return resourceExhausted(err.reason);
    }
  }
  return err;
}

async function mapped<T>(fn: () => Promise<T> | T): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    throw toConnectError(err);
  }
}

/** Creates the federation capability: registry, handshake, bundle endpoint and refresher, service. */
export function createFederation(
  deps: FederationDeps,
  options: FederationOptions,
  kernel: { edgeId: string },
): Federation {
  const { clock, audit } = deps;
  const log = deps.logger.child({ component: "federation" });
  const registry = createPeerRegistry(deps);
  options.peers.forEach((pin, i) => {
    if (registry.get(pin.spiffeId)) return;
    try {
      registry.add(pin, "config");
    } catch (err) {
      if (err instanceof PeerRegistryError) throw new ConfigError(`federation.peers[${i}].${err.message}`);
      throw err;
    }
  });
  let identity: FederationIdentity | undefined;
  const endpoints = { grpc: options.advertiseGrpc, http: options.advertiseHttp };

  const current = () => {
    const ctx = identity?.source.current();
    if (!ctx)
      throw new FederationRefusal("failed-precondition", "this kernel has no workload identity (identity.source none)");
    return ctx;
  };
  const signing = (): SigningIdentity => {
    const { svid } = current();
    return { spiffeId: svid.spiffeId.id, certificates: svid.certificates, privateKey: svid.privateKey };
  };
  const ownBundle = (): string => {
    const ctx = current();
    const own = ctx.bundles.get(ctx.svid.spiffeId.trustDomain);
    if (!own) throw new FederationRefusal("failed-precondition", "no bundle of this kernel's own trust domain");
    // The sequence grows with every CA added: the newest authority's start, in seconds.
    const sequence = Math.max(...own.authorities.map((a) => Math.floor(a.notBefore / 1000)));
    return encodeSpiffeBundle(own, sequence, options.bundleRefreshHintSeconds);
  };
  let cached: { descriptor: SignedDescriptor; until: number; key: string } | undefined;
  const descriptor = async (): Promise<SignedDescriptor> => {
    const id = signing();
    const key = `${Buffer.from(id.certificates[0] ?? []).toString("base64")}|${endpoints.grpc}|${endpoints.http}`;
    // Re-signed at half its lifetime, or at once when the SVID or the endpoints changed.
    if (cached && cached.key === key && clock.now() < cached.until) return cached.descriptor;
    const http = endpoints.http;
    const signed = await signDescriptor(
      id,
      {
        kernelId: kernel.edgeId,
        grpcEndpoint: endpoints.grpc,
        httpEndpoint: http,
        bundleEndpointUrl: http ? `${http.replace(/\/+$/, "")}/federation/bundle` : "",
        tenants: options.tenants,
      },
      clock,
      options.descriptorTtlMs,
    );
    cached = { descriptor: signed, until: clock.now() + options.descriptorTtlMs / 2, key };
    return signed;
  };
  const handshakeDeps: HandshakeDeps = {
    registry,
    audit,
    clock,
    logger: deps.logger,
    self: { identity: signing, descriptor, bundle: ownBundle },
  };
  const delegations = createDelegations(
    { registry, audit, clock, identity: signing },
    {
      ...DEFAULT_DELEGATION_OPTIONS,
      ttlSeconds: options.delegationTtlSeconds,
      maxRemembered: options.maxRememberedDelegations,
    },
  );
  const responder = createHandshakeResponder(handshakeDeps, {
    handshakeTtlMs: options.handshakeTtlMs,
    maxPending: options.maxPendingHandshakes,
  });

  const connect = async (spiffeId: string, transport: "grpc" | "connect", signal?: AbortSignal) => {
    const peer = registry.get(spiffeId);
    if (!peer) throw new PeerRegistryError("spiffe_id", `no peer ${spiffeId}`, "not-found");
    if (!identity) throw new FederationRefusal("failed-precondition", "this kernel has no workload identity");
    const nodeOptions = identity.clientTls([peer.spiffeId]);
    const client = createClient(
      FederationService,
      transport === "grpc"
        ? createGrpcTransport({ baseUrl: `https://${peer.grpcEndpoint}`, nodeOptions })
        : createConnectTransport({ baseUrl: peer.httpEndpoint, httpVersion: "1.1", nodeOptions }),
    );
    return initiateHandshake(handshakeDeps, spiffeId, client, signal);
  };

  // Bundle refresh: each peer on its own timer, at its bundle's refresh hint.
  const timers = new Map<string, TimerHandle>();
  const failures = new Map<string, { count: number; detail: string }>();
  let running = false;
  let reloadTimer: TimerHandle | undefined;
  const schedule = (spiffeId: string, delayMs: number) => {
    clock.clearTimeout(timers.get(spiffeId));
    if (!running) return;
    const ms = Math.min(options.maxRefreshIntervalMs, Math.max(options.minRefreshIntervalMs, delayMs));
    timers.set(
      spiffeId,
      clock.setTimeout(() => void refresh(spiffeId), ms),
    );
  };
  const hintMs = (p: PeerRecord) => (p.bundle?.refreshHintSeconds ?? options.bundleRefreshHintSeconds) * 1000;
  const refresh = async (spiffeId: string): Promise<void> => {
    timers.delete(spiffeId);
    const peer = registry.get(spiffeId);
    if (!peer || peer.state === "quarantined" || !running) return;
    try {
      const text = await fetchPeerBundle(peer, clock, options.fetchTimeoutMs);
      const { record } = registry.updateBundle(spiffeId, text, "system");
      failures.delete(spiffeId);
      schedule(spiffeId, hintMs(record));
    } catch (err) {
      const verification = (err instanceof BundleFetchError && err.verification) || err instanceof PeerRegistryError;
      const detail = err instanceof Error ? err.message : String(err);
      if (verification && registry.get(spiffeId)) {
        // A bundle that cannot be verified is never trusted: the peer is quarantined (audited).
        registry.quarantine(spiffeId, `bundle cannot be verified: ${detail}`, "system");
        return;
      }
      const f = { count: (failures.get(spiffeId)?.count ?? 0) + 1, detail };
      failures.set(spiffeId, f);
      log.warn(
        { peer: spiffeId, err: detail, failures: f.count },
        "peer bundle refresh failed; keeping the trusted bundle",
      );
      // Back off from the floor, doubling, never past the hint: a rotation must not be missed.
      schedule(spiffeId, Math.min(hintMs(peer), options.minRefreshIntervalMs * 2 ** Math.min(f.count, 20)));
    }
  };
  registry.onPeerChange((spiffeId) => {
    const peer = registry.get(spiffeId);
    if (!peer) {
      clock.clearTimeout(timers.get(spiffeId));
      timers.delete(spiffeId);
      failures.delete(spiffeId);
      return;
    }
    // A new peer, or one out of quarantine: fetch now when no bundle is known, else on the hint.
    if (!timers.has(spiffeId) && peer.state !== "quarantined") schedule(spiffeId, peer.bundle ? hintMs(peer) : 0);
  });

  const json = (res: Parameters<FederationRoute>[1], status: number, body: string, type = "application/json") => {
    res.writeHead(status, { "content-type": type, "cache-control": "no-store" });
    res.end(body);
  };

  return {
    registry,
    delegations,
    spiffeId: () => identity?.source.current()?.svid.spiffeId.id,
    attachIdentity(id) {
      identity = id;
    },
    setEndpoints(grpc, http) {
      if (!options.advertiseGrpc) endpoints.grpc = grpc;
      if (!options.advertiseHttp) endpoints.http = http;
    },
    service(actorOf) {
      return {
        discover: () => mapped(async () => ({ descriptor: await descriptor() })),
        handshake: (req) =>
          mapped(() => {
            switch (req.step.case) {
              case "hello":
                return responder.hello(req.step.value);
              case "finish":
                return responder.finish(req.step.value);
              default:
                throw invalidArgument("step", "set hello or finish");
            }
          }),
        addPeer: (req, ctx) =>
          mapped(() => {
            const record = registry.add(
              {
                spiffeId: req.spiffeId,
                grpcEndpoint: req.grpcEndpoint,
                httpEndpoint: req.httpEndpoint,
                bundleEndpointUrl: req.bundleEndpointUrl,
                bundleEndpointProfile: req.bundleEndpointProfile,
                bundle: req.bundle,
                bundleSha256: req.bundleSha256,
                agreement: {
                  inbound: req.agreement?.inbound ?? {},
                  outbound: req.agreement?.outbound ?? {},
                },
              },
              actorOf(ctx),
            );
            return { peer: peerToProto(record) };
          }),
        listPeers: () => mapped(() => ({ peers: registry.list().map(peerToProto) })),
        removePeer: (req, ctx) =>
          mapped(() => {
            registry.remove(req.spiffeId, actorOf(ctx));
            return {};
          }),
        quarantinePeer: (req, ctx) =>
          mapped(() => {
            const record = req.lift
              ? registry.lift(req.spiffeId, actorOf(ctx))
              : registry.quarantine(req.spiffeId, req.reason || "operator", actorOf(ctx));
            return { peer: peerToProto(record) };
          }),
        connectPeer: (req, ctx) =>
          mapped(async () => {
            const transport = req.transport || "grpc";
            if (transport !== "grpc" && transport !== "connect") {
              throw invalidArgument("transport", "must be grpc or connect");
            }
            try {
              return { peer: peerToProto(await connect(req.spiffeId, transport, ctx.signal)) };
            } catch (err) {
              // The peer's own refusal or its absence: this kernel is fine, the peer is not reachable as pinned.
              if (err instanceof ConnectError) {
                throw err.code === Code.PermissionDenied || err.code === Code.Unauthenticated
                  ? failedPrecondition(`peer refused the handshake: ${err.rawMessage}`)
                  : unavailable(`peer unreachable: ${err.rawMessage}`);
              }
              throw err;
            }
          }),
      };
    },
    routes() {
      return {
        "/federation/bundle": (req, res) => {
          if (req.method !== "GET") return json(res, 405, JSON.stringify({ error: "use GET" }));
          try {
            json(res, 200, ownBundle());
          } catch {
            json(res, 503, JSON.stringify({ error: "no trust bundle (identity.source none)" }));
          }
        },
        "/federation/discover": (req, res) => {
          if (req.method !== "GET") return json(res, 405, JSON.stringify({ error: "use GET" }));
          descriptor().then(
            (d) => json(res, 200, JSON.stringify({ descriptor: { jws: d.jws } })),
            () => json(res, 503, JSON.stringify({ error: "no workload identity (identity.source none)" })),
          );
        },
      };
    },
    rpcAliases: () => ({ "/federation/handshake": `/${FederationService.typeName}/Handshake` }),
    connect,
    probe() {
      const quarantined = registry.list().filter((p) => p.state === "quarantined");
      const details = [
        ...quarantined.map((p) => `${p.spiffeId} quarantined: ${p.quarantineReason}`),
        ...[...failures].map(([id, f]) => `${id} bundle refresh failing: ${f.detail}`),
      ];
      return details.length
        ? { name: "federation-peers", state: "degraded", detail: details.join("; ").slice(0, 1000) }
        : { name: "federation-peers", state: "ok" };
    },
    start() {
      running = true;
      reloadTimer = clock.setInterval(() => {
        try {
          registry.reload();
        } catch (err) {
          log.error({ err }, "peer registry reload failed");
        }
      }, options.reloadIntervalMs);
      for (const p of registry.list()) schedule(p.spiffeId, p.bundle ? hintMs(p) : 0);
    },
    stop() {
      running = false;
      clock.clearInterval(reloadTimer);
      for (const t of timers.values()) clock.clearTimeout(t);
      timers.clear();
    },
  };
}
