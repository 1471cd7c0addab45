import { isIP } from "node:net";
import * as grpc from "@grpc/grpc-js";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import type { Meter } from "@opentelemetry/api";
import {
  type Clock,
  type TimerHandle,
  ConfigError,
  KernelError,
  readInt,
  readObject,
  readString,
  resolveDependencyBreakerOptions,
  type DependencyBreaker,
  type DependencyBreakerOptions,
} from "../../common/index.js";
import type { Logger } from "../../telemetry/index.js";
import { X509SVIDRequestSchema, X509SVIDResponseSchema } from "../../../gen/spiffe/workload/workload_pb.js";
import { parseSpiffeId, parseTrustDomain } from "./spiffe-id.js";
import { createX509Bundle, createX509BundleSet, type X509Bundle } from "./x509-bundle.js";
import { createX509SourceState, X509SourceStoppedError, type X509Context, type X509Source } from "./x509-source.js";
import { parseX509Svid, SvidError } from "./x509-svid.js";

/** The Workload API answered InvalidArgument: the request itself is wrong, so retrying cannot help. */
export class WorkloadApiError extends KernelError {
  override name = "WorkloadApiError";
}

/** Options of the Workload API X509 source. */
export interface WorkloadX509SourceOptions {
  /** Workload API endpoint, `unix:///abs/path` or `tcp://ip:port` (the value of SPIFFE_ENDPOINT_SOCKET). Required. */
  socket: string;
  /** Use the SVID carrying this hint instead of the default (first) one. @default "" */
  hint: string;
  /** First reconnect delay in ms. @default 100 */
  initialBackoffMs: number;
  /** Reconnect delay cap in ms. @default 30000 */
  maxBackoffMs: number;
}

/** Default first reconnect delay. */
export const DEFAULT_WORKLOAD_API_INITIAL_BACKOFF_MS = 100;
/** Default reconnect delay cap. */
export const DEFAULT_WORKLOAD_API_MAX_BACKOFF_MS = 30_000;
/** Default SVID hint (none: the default identity). */
export const DEFAULT_WORKLOAD_API_HINT = "";

/** Dependencies of the Workload API X509 source. */
export interface WorkloadX509SourceDeps {
  logger: Logger;
  clock: Clock;
  meter: Meter;
  /** Jitter source in [0, 1). @default Math.random */
  random?: () => number;
}

/**
 * Turns SPIFFE_ENDPOINT_SOCKET into a grpc-js target (SPIFFE Workload Endpoint §4: `unix` with an
 * absolute path and nothing else, or `tcp` with an IP address and a port, no DNS names).
 */
export function workloadEndpointTarget(address: string): string {
  let url: URL;
  try {
    url = new URL(address);
  } catch {
    throw new ConfigError(`workload API address ${JSON.stringify(address)} is not a URI`);
  }
  if (url.username || url.password || url.search || url.hash) {
    throw new ConfigError(`workload API address ${JSON.stringify(address)} may not have userinfo, query or fragment`);
  }
  if (url.protocol === "unix:") {
    if (url.host !== "" || !url.pathname.startsWith("/") || url.pathname === "/") {
      throw new ConfigError(`workload API address ${JSON.stringify(address)} must be unix:///absolute/path`);
    }
    return `unix://${decodeURIComponent(url.pathname)}`;
  }
  if (url.protocol === "tcp:") {
    const host = url.hostname.replace(/^\[(.*)\]$/, "$1");
    if (isIP(host) === 0 || url.port === "" || url.pathname !== "") {
      throw new ConfigError(`workload API address ${JSON.stringify(address)} must be tcp://<ip>:<port>`);
    }
    return isIP(host) === 6 ? `ipv6:[${host}]:${url.port}` : `ipv4:${host}:${url.port}`;
  }
  throw new ConfigError(`workload API address ${JSON.stringify(address)} must use the unix or tcp scheme`);
}

/** Validates a partial options object and fills defaults; errors name the field under `path`. */
export function resolveWorkloadX509SourceOptions(
  input: Partial<WorkloadX509SourceOptions>,
  path = "spiffe.workloadApi",
): WorkloadX509SourceOptions {
  const o = readObject(input, path);
  const socket = readString(o, "socket", path, "", { nonEmpty: true });
  try {
    workloadEndpointTarget(socket);
  } catch (err) {
    throw new ConfigError(`${path}.socket: ${(err as Error).message}`);
  }
  const hint = readString(o, "hint", path, DEFAULT_WORKLOAD_API_HINT);
  const initialBackoffMs = readInt(o, "initialBackoffMs", path, DEFAULT_WORKLOAD_API_INITIAL_BACKOFF_MS, 1);
  const maxBackoffMs = readInt(o, "maxBackoffMs", path, DEFAULT_WORKLOAD_API_MAX_BACKOFF_MS, 1);
  if (maxBackoffMs < initialBackoffMs) throw new ConfigError(`${path}.maxBackoffMs must be >= initialBackoffMs`);
  return { socket, hint, initialBackoffMs, maxBackoffMs };
}

const FETCH_X509_SVID = "/SpiffeWorkloadAPI/FetchX509SVID";
// SPIFFE Workload Endpoint §3: every request carries this header, or the server answers InvalidArgument.
const SECURITY_HEADER = "workload.spiffe.io";
const FETCH_X509_BUNDLES = "/SpiffeWorkloadAPI/FetchX509Bundles";

/** Decodes and validates one FetchX509SVID message into a context; throws on anything malformed. */
export function x509ContextFromResponse(bytes: Uint8Array, hint: string, clock: Clock): X509Context {
  const msg = fromBinary(X509SVIDResponseSchema, bytes);
  // SPIFFE Workload API §5.2.1: the first SVID is the default; with a hint, the first carrying it.
  const chosen = hint === "" ? msg.svids[0] : msg.svids.find((s) => s.hint === hint);
  if (!chosen)
    throw new SvidError(hint === "" ? "message has no SVID" : `message has no SVID with hint ${JSON.stringify(hint)}`);
  // §5.2.1: every X509SVID field but hint is mandatory.
  if (chosen.spiffeId === "" || chosen.bundle.length === 0 || chosen.x509SvidKey.length === 0) {
    throw new SvidError("X509SVID has an empty mandatory field");
  }
  const svid = parseX509Svid({
    chain: chosen.x509Svid,
    key: chosen.x509SvidKey,
    spiffeId: chosen.spiffeId,
    hint: chosen.hint,
  });
  const now = clock.now();
  if (svid.notAfter < now || svid.notBefore > now)
    throw new SvidError(`SVID ${svid.spiffeId.id} is outside its validity period`);
  const bundles: X509Bundle[] = [createX509Bundle(svid.spiffeId.trustDomain, chosen.bundle)];
  for (const [key, der] of Object.entries(msg.federatedBundles)) {
    // Keys are the trust domain's SPIFFE ID ("spiffe://example.org"); accept a bare name too.
    const td = key.startsWith("spiffe://") ? parseSpiffeId(key).trustDomain : parseTrustDomain(key);
    bundles.push(createX509Bundle(td, der));
  }
  return { svid, bundles: createX509BundleSet(bundles) };
}

/**
 * Watches FetchX509SVID on the Workload API (SPIFFE Workload API §5): keeps the stream open, takes
 * each message as the full state, skips (logs and counts) malformed ones, reconnects with capped
 * exponential backoff and jitter on every status but InvalidArgument, which stops the source.
 */
export function createWorkloadX509Source(
  deps: WorkloadX509SourceDeps,
  input: Partial<WorkloadX509SourceOptions> & { socket: string },
): X509Source {
  const options = resolveWorkloadX509SourceOptions(input);
  const logger = deps.logger.child({ component: "spiffe-workload-api" });
  const random = deps.random ?? Math.random;
  const state = createX509SourceState(logger);
  const updates = deps.meter.createCounter("nops.spiffe.workload_api.updates", {
    description: "X509 contexts accepted from the Workload API",
  });
  const malformed = deps.meter.createCounter("nops.spiffe.workload_api.malformed_messages", {
    description: "FetchX509SVID messages rejected as malformed and skipped",
  });
  const streamErrors = deps.meter.createCounter("nops.spiffe.workload_api.stream_errors", {
    description: "FetchX509SVID streams that ended, by gRPC status code",
  });

  const client = new grpc.Client(workloadEndpointTarget(options.socket), grpc.credentials.createInsecure());
  let call: grpc.ClientReadableStream<Buffer> | undefined;
  let timer: TimerHandle | undefined;
  let failures = 0;
  let connected = false;
  let lastProblem = "not connected yet";

  const backoffMs = (): number => {
    const ceiling = Math.min(options.maxBackoffMs, options.initialBackoffMs * 2 ** Math.min(failures, 30));
    // Equal jitter: keeps a floor of half the delay so a crowd of restarted workloads spreads out.
    return Math.round(ceiling / 2 + (ceiling / 2) * random());
  };

  const onMessage = (bytes: Buffer): void => {
    let context: X509Context;
    try {
      context = x509ContextFromResponse(bytes, options.hint, deps.clock);
    } catch (err) {
      malformed.add(1);
      logger.warn({ err }, "skipping malformed Workload API message; keeping the previous identity");
      return;
    }
    failures = 0;
    connected = true;
    updates.add(1);
    logger.info(
      {
        spiffeId: context.svid.spiffeId.id,
        notAfter: new Date(context.svid.notAfter).toISOString(),
        trustDomains: [...context.bundles.keys()],
      },
      "X509-SVID update from the Workload API",
    );
    state.publish(context);
  };

  const connect = (): void => {
    timer = undefined;
    if (state.stopped) return;
    const metadata = new grpc.Metadata();
    metadata.set(SECURITY_HEADER, "true");
    const request = Buffer.from(toBinary(X509SVIDRequestSchema, create(X509SVIDRequestSchema)));
    // Raw bytes out of grpc-js: decoding here lets a malformed message be skipped instead of
    // grpc-js failing the whole stream.
    const stream = client.makeServerStreamRequest<Buffer, Buffer>(
      FETCH_X509_SVID,
      (b) => b,
      (b) => b,
      request,
      metadata,
    );
    call = stream;
    stream.on("data", onMessage);
    // Every outcome is also delivered as "status"; this keeps "error" from being unhandled.
    stream.on("error", () => undefined);
    stream.on("status", (status: grpc.StatusObject) => {
      if (call !== stream) return;
      call = undefined;
      if (state.stopped) return;
      streamErrors.add(1, { code: grpc.status[status.code] ?? String(status.code) });
      connected = false;
      lastProblem = `stream ended with ${grpc.status[status.code] ?? status.code}: ${status.details}`;
      if (status.code === grpc.status.INVALID_ARGUMENT) {
        logger.error({ code: status.code, details: status.details }, "Workload API rejected the request; not retrying");
        state.stop(new WorkloadApiError(`Workload API answered InvalidArgument: ${status.details}`));
        client.close();
        return;
      }
      const delay = backoffMs();
      failures += 1;
      const level =
        status.code === grpc.status.PERMISSION_DENIED || status.code === grpc.status.UNAVAILABLE ? "warn" : "error";
      logger[level](
        { code: grpc.status[status.code], details: status.details, retryInMs: delay },
        "Workload API stream ended; retrying",
      );
      timer = deps.clock.setTimeout(connect, delay);
    });
  };
  connect();

  return {
    current: () => state.current(),
    ready: () => state.ready(),
    connection: () => (connected ? { connected } : { connected, detail: lastProblem }),
    onUpdate: (listener) => state.onUpdate(listener),
    async close() {
      if (state.stopped) return;
      state.stop(new X509SourceStoppedError("X509 source closed"));
      deps.clock.clearTimeout(timer);
      call?.cancel();
      call = undefined;
      client.close();
    },
  };
}

/** Default Workload API liveness check: answered within 2 s, every 5 s; two misses open it. */
export const DEFAULT_WORKLOAD_API_BREAKER: DependencyBreakerOptions = {
  budgetMs: 2000,
  failuresToTrip: 2,
  halfOpenAfterMs: 5000,
  probeIntervalMs: 5000,
};

/** Validates `admin.dependencies.workloadApi`; throws ConfigError naming the field. */
export function resolveWorkloadApiBreakerOptions(
  input: unknown,
  path = "admin.dependencies.workloadApi",
): DependencyBreakerOptions {
  return resolveDependencyBreakerOptions(input, path, DEFAULT_WORKLOAD_API_BREAKER);
}

/** Whether the SPIRE agent answers, apart from the long-lived SVID stream. */
export interface WorkloadApiLiveness {
  start(): void;
  stop(): void;
  /** Runs one check now (tests; the timer runs one every probeIntervalMs). */
  check(): Promise<void>;
  /** Connected and answering, or why not. */
  connection(): { connected: boolean; detail?: string };
}

// Answers that prove the agent is alive even though they are errors (e.g. no bundles for this workload).
const NO_ANSWER = new Set([grpc.status.UNAVAILABLE, grpc.status.DEADLINE_EXCEEDED, grpc.status.CANCELLED]);

/**
 * A hung agent (SIGSTOP, deadlocked) keeps the FetchX509SVID stream open and silent, which looks
 * exactly like a quiet healthy agent. So every probeIntervalMs a short FetchX509Bundles call (it
 * answers with the current bundles at once, SPIFFE Workload API §6) must get its first message
 * within the breaker's budget; misses open the breaker and the source reports "not answering"
 * while the kernel keeps serving on its current SVID.
 */
export function createWorkloadApiLiveness(
  deps: { logger: Logger; breaker: DependencyBreaker },
  input: { socket: string },
): WorkloadApiLiveness {
  const logger = deps.logger.child({ component: "spiffe-workload-api" });
  const client = new grpc.Client(workloadEndpointTarget(input.socket), grpc.credentials.createInsecure());
  let timer: NodeJS.Timeout | undefined;
  const once = (signal: AbortSignal): Promise<void> =>
    new Promise<void>((resolve, reject) => {
      const metadata = new grpc.Metadata();
      metadata.set(SECURITY_HEADER, "true");
      const stream = client.makeServerStreamRequest<Buffer, Buffer>(
        FETCH_X509_BUNDLES,
        (b) => b,
        (b) => b,
        Buffer.alloc(0),
        metadata,
      );
      const done = (err?: Error): void => {
        signal.removeEventListener("abort", abort);
        stream.cancel();
        if (err) reject(err);
        else resolve();
      };
      const abort = (): void => done(signal.reason instanceof Error ? signal.reason : new Error("aborted"));
      signal.addEventListener("abort", abort, { once: true });
      stream.on("data", () => done());
      stream.on("error", () => undefined);
      stream.on("status", (st: grpc.StatusObject) =>
        NO_ANSWER.has(st.code) ? done(new Error(`${grpc.status[st.code]}: ${st.details}`)) : done(),
      );
    });
  const check = (): Promise<void> =>
    deps.breaker.probe(once).catch((err: unknown) => {
      logger.debug({ err }, "Workload API liveness check failed");
    });
  return {
    start() {
      timer ??= setInterval(() => void check(), deps.breaker.options.probeIntervalMs).unref();
    },
    stop() {
      clearInterval(timer);
      timer = undefined;
      client.close();
    },
    check,
    connection: () =>
      deps.breaker.isOpen()
        ? { connected: false, detail: `Workload API ${deps.breaker.status().detail ?? "not answering"}` }
        : { connected: true },
  };
}
