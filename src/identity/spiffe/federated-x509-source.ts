import type { Logger } from "../../telemetry/index.js";
import type { X509Bundle } from "./x509-bundle.js";
import { createX509SourceState, X509SourceStoppedError, type X509Context, type X509Source } from "./x509-source.js";

/** Bundles of federated trust domains, owned by the federation capability (its peer registry). */
export interface FederatedBundles {
  /** The bundles to trust now, one per federated trust domain. */
  current(): readonly X509Bundle[];
  /** Calls `listener` whenever `current()` changes; returns an unsubscribe function. */
  onChange(listener: () => void): () => void;
}

function merge(context: X509Context, federated: readonly X509Bundle[]): X509Context {
  const bundles = new Map<string, X509Bundle>();
  for (const b of federated) bundles.set(b.trustDomain, b);
  // The source's own bundles (own trust domain, any the Workload API federates) always win.
  for (const [td, b] of context.bundles) bundles.set(td, b);
  return { svid: context.svid, bundles };
}

/**
 * Wraps a source so every context it publishes also carries the federated bundles, and a change
 * of those republishes the current context: TLS material follows it like an SVID rotation, so
 * new handshakes trust exactly the registry's peers (SPIFFE federation: the peer's bundle is
 * consulted only for IDs of the peer's trust domain, which verifyPeer enforces).
 */
export function withFederatedBundles(source: X509Source, federated: FederatedBundles, logger: Logger): X509Source {
  const state = createX509SourceState(logger);
  let base = source.current();
  const publish = () => {
    if (base) state.publish(merge(base, federated.current()));
  };
  publish();
  const offSource = source.onUpdate((next) => {
    base = next;
    publish();
  });
  const offFederated = federated.onChange(publish);
  source.ready().then(
    (first) => {
      if (!base) {
        base = first;
        publish();
      }
    },
    (err: Error) => state.stop(err),
  );
  const wrapped: X509Source = {
    current: () => state.current(),
    ready: () => state.ready(),
    onUpdate: (listener) => state.onUpdate(listener),
    close: async () => {
      offSource();
      offFederated();
      state.stop(new X509SourceStoppedError("X509 source closed"));
      await source.close();
    },
  };
  if (source.connection) wrapped.connection = () => source.connection!();
  return wrapped;
}
