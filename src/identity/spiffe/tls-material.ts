import {
  createSecureContext,
  type ConnectionOptions,
  type PeerCertificate,
  type SecureContext,
  type SecureContextOptions,
  type Server,
  type TlsOptions,
} from "node:tls";
import * as grpc from "@grpc/grpc-js";
import { type Clock, KernelError } from "../../common/index.js";
import type { Logger } from "../../telemetry/index.js";
import { bundleSetToPem } from "./x509-bundle.js";
import type { X509Context, X509Source } from "./x509-source.js";
import { derChainFromPeerCertificate } from "../../server/index.js";
import { verifyPeer, type VerifiedPeer } from "./verify-peer.js";

/** TLS material was requested before the source had an identity. */
export class TlsMaterialError extends KernelError {
  override name = "TlsMaterialError";
}

/** Options for outbound clients. */
export interface ClientTlsOptions {
  /** Accept only servers with one of these SPIFFE IDs. @default any ID that verifies */
  allowedIds?: readonly string[];
  /**
   * Told about every server that failed verification (wrong SPIFFE ID, untrusted chain), before
   * the handshake fails.
   */
  onReject?: (err: Error) => void;
}

/** mTLS material fed by an X509Source; every rotation applies to new handshakes only. */
export interface TlsMaterial {
  /**
   * Options for `http2.createSecureServer` / `https.createServer` (spread them and add e.g.
   * `allowHTTP1: true`); SNICallback hands out the current context. Call `attachServer` on the
   * server too so clients without SNI (IP addresses) also get rotated material.
   */
  serverOptions(): TlsOptions;
  /** Keeps a node:tls-based server's default context current; returns a detach function. */
  attachServer(server: Server): () => void;
  /** grpc-js server credentials (client certificate required) that rotate through a certificate provider. */
  grpcServerCredentials(): grpc.ServerCredentials;
  /** grpc-js channel credentials presenting our SVID and verifying the server's SVID per trust domain. */
  grpcChannelCredentials(options?: ClientTlsOptions): grpc.ChannelCredentials;
  /** node:tls / https / http2.connect options with the CURRENT material (build one per connection). */
  clientOptions(options?: ClientTlsOptions): ConnectionOptions;
  /** Verifies a peer chain (DER, leaf first) against the current bundles. */
  verifyPeer(chainDer: readonly Uint8Array[]): VerifiedPeer;
  /** Stops following the source. */
  close(): void;
}

/** Dependencies of createTlsMaterial. */
export interface TlsMaterialDeps {
  source: X509Source;
  clock: Clock;
  logger: Logger;
}

// The brief's floor; Node's default is also 1.2 but can be lowered by --tls-min-v1.0.
const MIN_TLS_VERSION = "TLSv1.2";

function contextOptions(context: X509Context): SecureContextOptions {
  return {
    cert: context.svid.certificatePem,
    key: context.svid.privateKeyPem,
    // Union of every trust domain's authorities; verifyPeer enforces the per-trust-domain anchor.
    ca: bundleSetToPem(context.bundles),
    minVersion: MIN_TLS_VERSION,
  };
}

/**
 * A grpc-js CertificateProvider (grpc-js >= 1.10, `experimental`) backed by the source: grpc-js
 * calls `setSecureContext` on its http2 server or rebuilds the client context when notified, so
 * open connections keep their handshake while new ones get the new SVID and bundles.
 */
function createSourceCertificateProvider(
  initial: X509Context,
): grpc.experimental.CertificateProvider & { update(c: X509Context): void } {
  let ca: grpc.experimental.CaCertificateUpdate;
  let identity: grpc.experimental.IdentityCertificateUpdate;
  const caListeners = new Set<grpc.experimental.CaCertificateUpdateListener>();
  const identityListeners = new Set<grpc.experimental.IdentityCertificateUpdateListener>();
  const set = (c: X509Context): void => {
    ca = { caCertificate: Buffer.from(bundleSetToPem(c.bundles)) };
    identity = { certificate: Buffer.from(c.svid.certificatePem), privateKey: Buffer.from(c.svid.privateKeyPem) };
  };
  set(initial);
  return {
    addCaCertificateListener(listener) {
      caListeners.add(listener);
      // Deferred like grpc-js's own FileWatcherCertificateProvider: grpc-js registers its context
      // watcher only after adding the listener, so a synchronous call would be lost.
      process.nextTick(() => {
        if (caListeners.has(listener)) listener(ca);
      });
    },
    removeCaCertificateListener(listener) {
      caListeners.delete(listener);
    },
    addIdentityCertificateListener(listener) {
      identityListeners.add(listener);
      process.nextTick(() => {
        if (identityListeners.has(listener)) listener(identity);
      });
    },
    removeIdentityCertificateListener(listener) {
      identityListeners.delete(listener);
    },
    update(c) {
      set(c);
      for (const l of identityListeners) l(identity);
      for (const l of caListeners) l(ca);
    },
  };
}

/** Builds mTLS material (TLS >= 1.2, client certificate required) from a ready X509Source. */
export function createTlsMaterial(deps: TlsMaterialDeps): TlsMaterial {
  const logger = deps.logger.child({ component: "spiffe-tls" });
  const first = deps.source.current();
  if (!first) throw new TlsMaterialError("X509 source has no identity yet; await source.ready() first");
  let current = first;
  let options = contextOptions(current);
  let secureContext: SecureContext = createSecureContext(options);
  const servers = new Set<Server>();
  const provider = createSourceCertificateProvider(current);

  const unsubscribe = deps.source.onUpdate((next) => {
    let nextOptions: SecureContextOptions;
    let nextContext: SecureContext;
    try {
      nextOptions = contextOptions(next);
      nextContext = createSecureContext(nextOptions);
    } catch (err) {
      logger.error({ err }, "new SVID cannot build a TLS context; keeping the previous one");
      return;
    }
    current = next;
    options = nextOptions;
    secureContext = nextContext;
    for (const server of servers) server.setSecureContext(options);
    provider.update(next);
    logger.info({ spiffeId: next.svid.spiffeId.id }, "TLS material rotated for new handshakes");
  });

  const verify = (
    chainDer: readonly Uint8Array[],
    role: "client" | "server",
    allowedIds?: readonly string[],
  ): VerifiedPeer => verifyPeer(chainDer, current.bundles, deps.clock, allowedIds ? { allowedIds, role } : { role });

  // Replaces hostname checks: a SPIFFE server is identified by its SPIFFE ID (X509-SVID §5.2).
  const checkServerIdentity =
    (allowedIds?: readonly string[], onReject?: (err: Error) => void) =>
    (_host: string, cert: PeerCertificate): Error | undefined => {
      try {
        verify(derChainFromPeerCertificate(cert), "server", allowedIds);
        return undefined;
      } catch (err) {
        onReject?.(err as Error);
        return err as Error;
      }
    };

  return {
    serverOptions: () => ({
      ...options,
      requestCert: true,
      rejectUnauthorized: true,
      SNICallback: (_servername, cb) => cb(null, secureContext),
    }),
    attachServer(server) {
      servers.add(server);
      server.setSecureContext(options);
      return () => {
        servers.delete(server);
      };
    },
    grpcServerCredentials: () =>
      // Same provider for identity and CA (grpc-js 1.14 swaps the argument names internally).
      grpc.experimental.createCertificateProviderServerCredentials(provider, provider, true),
    grpcChannelCredentials: (o = {}) =>
      grpc.experimental.createCertificateProviderChannelCredentials(provider, provider, {
        checkServerIdentity: checkServerIdentity(o.allowedIds, o.onReject),
        rejectUnauthorized: true,
      }),
    clientOptions: (o = {}) => ({
      ...options,
      rejectUnauthorized: true,
      checkServerIdentity: checkServerIdentity(o.allowedIds, o.onReject),
    }),
    verifyPeer: (chainDer) => verify(chainDer, "client"),
    close() {
      unsubscribe();
      servers.clear();
    },
  };
}
