import type { Logger } from "../../telemetry/index.js";
import { KernelError } from "../../common/index.js";
import type { X509BundleSet } from "./x509-bundle.js";
import type { X509Svid } from "./x509-svid.js";

/** The workload's current identity: its default SVID and every trust bundle it accepts. */
export interface X509Context {
  /** The default X509-SVID (first in the Workload API's list, or the one with the wanted hint). */
  readonly svid: X509Svid;
  /** Own trust domain's bundle plus federated bundles, keyed by trust domain name. */
  readonly bundles: X509BundleSet;
}

/** Receives every new X509Context. */
export type X509UpdateListener = (context: X509Context) => void;

/** A live source of X509-SVIDs and bundles (Workload API stream or the dev issuer): one code path for both. */
export interface X509Source {
  /** The latest good context, or undefined before the first one arrived. */
  current(): X509Context | undefined;
  /** Resolves with the first good context; rejects if the source stops (closed, InvalidArgument) first. */
  ready(): Promise<X509Context>;
  /** Calls `listener` on every new context (not the current one); returns an unsubscribe function. */
  onUpdate(listener: X509UpdateListener): () => void;
  /** Stops watching; idempotent. */
  close(): Promise<void>;
  /** Whether the stream to the identity provider is up (sources that have one). */
  connection?(): { connected: boolean; detail?: string };
}

/** The source stopped for good (closed, or the Workload API answered InvalidArgument). */
export class X509SourceStoppedError extends KernelError {
  override name = "X509SourceStoppedError";
}

/** Shared bookkeeping behind both sources: current context, ready promise, listeners. */
export interface X509SourceState {
  readonly stopped: boolean;
  current(): X509Context | undefined;
  ready(): Promise<X509Context>;
  onUpdate(listener: X509UpdateListener): () => void;
  /** Publishes a new context to `current()`, `ready()` and listeners. */
  publish(context: X509Context): void;
  /** Marks the source stopped; a pending `ready()` rejects with `error`. */
  stop(error: Error): void;
}

/** Creates the shared state of an X509Source; listener failures are logged, never thrown back. */
export function createX509SourceState(logger: Logger): X509SourceState {
  let latest: X509Context | undefined;
  let stopped = false;
  const listeners = new Set<X509UpdateListener>();
  let resolveReady: (c: X509Context) => void = () => undefined;
  let rejectReady: (e: Error) => void = () => undefined;
  const readyPromise = new Promise<X509Context>((resolve, reject) => {
    resolveReady = resolve;
    rejectReady = reject;
  });
  // A source that is stopped before anyone awaits ready() must not raise an unhandled rejection.
  readyPromise.catch(() => undefined);
  return {
    get stopped() {
      return stopped;
    },
    current: () => latest,
    ready: () => readyPromise,
    onUpdate(listener) {
      listeners.add(listener);
      return () => {
        listeners.delete(listener);
      };
    },
    publish(context) {
      if (stopped) return;
      latest = context;
      resolveReady(context);
      for (const listener of [...listeners]) {
        try {
          listener(context);
        } catch (err) {
          logger.error({ err }, "x509 source update listener failed");
        }
      }
    },
    stop(error) {
      if (stopped) return;
      stopped = true;
      listeners.clear();
      rejectReady(error);
    },
  };
}
