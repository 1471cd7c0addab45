import type * as http2 from "node:http2";
import { toBinary } from "@bufbuild/protobuf";
import {
  Code,
  ConnectError,
  createClient,
  createContextKey,
  createContextValues,
  type Client,
  type Interceptor,
} from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport } from "@connectrpc/connect-node";
import {
  type Clock,
  ConfigError,
  DependencyTimeoutError,
  DependencyUnavailableError,
  readInt,
  readSection,
  readString,
  resolveDependencyBreakerOptions,
  type DependencyBreaker,
  type DependencyBreakerOptions,
} from "../common/index.js";
import { DataGovernanceService } from "../../gen/nops/dge/v1/dge_pb.js";
import {
  createDgeSignatureVerifier,
  DEFAULT_DGE_MAX_SKEW_MS,
  DGE_ANSWER_CODES,
  DGE_SIGNATURE_HEADER,
} from "../egress/index.js";

/** Options of the DGE client. */
export interface DgeClientOptions {
  /** Base URL of the DGE, e.g. "http://127.0.0.1:7600" or "https://dge.example:443". @default "http://127.0.0.1:7600" */
  url: string;
  /** Wire protocol: "grpc" or "connect" (both over HTTP/2). @default "grpc" */
  protocol: "grpc" | "connect";
  /** HMAC keys by id the DGE may sign responses with. */
  keys: Record<string, string>;
  /** Largest clock difference accepted in a response signature, ms. @default 300000 */
  maxSkewMs: number;
}

/** Default DGE URL (the reference DGE's default port). */
export const DEFAULT_DGE_CLIENT_URL = "http://127.0.0.1:7600";
/** Default DGE wire protocol. */
export const DEFAULT_DGE_CLIENT_PROTOCOL = "grpc";

/** Validates the DGE client section; throws ConfigError naming the field. */
export function resolveDgeClientOptions(input: unknown, path = "egress.dge"): DgeClientOptions {
  const s = readSection(input, path, { url: "", protocol: "", keys: {}, maxSkewMs: 0 });
  const keys = s.keys;
  if (
    typeof keys !== "object" ||
    keys === null ||
    Array.isArray(keys) ||
    Object.keys(keys).length === 0 ||
    Object.values(keys).some((v) => typeof v !== "string" || v.length < 32)
  ) {
    throw new ConfigError(`${path}.keys must map at least one key id to a secret of at least 32 characters`);
  }
  return {
    url: readString(s, "url", path, DEFAULT_DGE_CLIENT_URL, { pattern: /^https?:\/\/[^\s/]+/ }),
    protocol: readString(s, "protocol", path, DEFAULT_DGE_CLIENT_PROTOCOL, { oneOf: ["grpc", "connect"] }) as
      | "grpc"
      | "connect",
    keys: keys as Record<string, string>,
    maxSkewMs: readInt(s, "maxSkewMs", path, DEFAULT_DGE_MAX_SKEW_MS, 1000, 3_600_000),
  };
}

/**
 * Default DGE call budget and breaker: 1 s per call (the reference DGE answers in milliseconds;
 * the guard's own 5 s deadline only shortens it), open after 3 unanswered calls, probed every second.
 */
export const DEFAULT_DGE_BREAKER: DependencyBreakerOptions = {
  budgetMs: 1000,
  failuresToTrip: 3,
  halfOpenAfterMs: 1000,
  probeIntervalMs: 1000,
};

/** Validates `admin.dependencies.dge`; throws ConfigError naming the field. */
export function resolveDgeBreakerOptions(input: unknown, path = "admin.dependencies.dge"): DependencyBreakerOptions {
  return resolveDependencyBreakerOptions(input, path, DEFAULT_DGE_BREAKER);
}

/** Whether an error from a DGE call means the DGE failed to answer (what the DGE breaker counts). */
export function isDgeFailure(err: unknown): boolean {
  return !(err instanceof ConnectError && DGE_ANSWER_CODES.has(err.code));
}

const kProbe = createContextKey(false, { description: "DGE health probe (tests an open circuit)" });

/** Call options of a health probe: it goes through the breaker even while the circuit is open. */
export function dgeProbeCallOptions(signal: AbortSignal): {
  signal: AbortSignal;
  contextValues: ReturnType<typeof createContextValues>;
} {
  return { signal, contextValues: createContextValues().set(kProbe, true) };
}

/** What the DGE client needs. */
export interface DgeClientDeps {
  clock: Clock;
  /** TLS material for https URLs (the kernel's SVID and trust bundle when mTLS is on). */
  tls?: Pick<http2.SecureClientSessionOptions, "ca" | "cert" | "key" | "servername" | "checkServerIdentity">;
  /** Run before the signature check, outermost first (e.g. the tracing interceptor that propagates trace context). */
  interceptors?: Interceptor[];
  /**
   * Budget and circuit of every call (create it with isFailure: isDgeFailure). While it is open a
   * call fails at once with DEADLINE_EXCEEDED, which the guard turns into a dge_timeout denial
   * without retrying: no verdict is still a block, just a fast one.
   */
  breaker?: DependencyBreaker;
}

/** A typed DataGovernanceService client whose every response has a verified signature. */
export type DgeClient = Client<typeof DataGovernanceService>;

/**
 * Creates the DGE client. This is the one outbound connection that does not pass the Egress
 * Guard: it is the guard's own dependency (the guard asks it for verdicts), and it only sends
 * data to the DGE, the service that decides what may leave.
 */
export function createDgeClient(deps: DgeClientDeps, options: DgeClientOptions): DgeClient {
  const verifier = createDgeSignatureVerifier(options.keys, deps.clock, options.maxSkewMs);
  // Responses are checked before anyone sees them: an unsigned, stale, replayed or forged verdict
  // surfaces as DgeSignatureError, which the guard treats as "no answer" and denies.
  const verify: Interceptor = (next) => async (req) => {
    const res = await next(req);
    if (!res.stream) {
      verifier.verify(
        res.header.get(DGE_SIGNATURE_HEADER),
        `/${req.service.typeName}/${req.method.name}`,
        toBinary(req.method.output, res.message),
      );
    }
    return res;
  };
  const breaker = deps.breaker;
  // Inside the signature check, so a forged answer (the DGE did answer) does not count as a hang.
  const guard: Interceptor = (next) => async (req) => {
    if (!breaker) return next(req);
    const attempt = (signal: AbortSignal) => next({ ...req, signal: AbortSignal.any([req.signal, signal]) });
    try {
      return await (req.contextValues.get(kProbe)
        ? breaker.probe(attempt)
        : breaker.call(attempt, { signal: req.signal }));
    } catch (err) {
      // DEADLINE_EXCEEDED, not UNAVAILABLE: the guard retries UNAVAILABLE until its deadline, and
      // an open circuit or an exhausted budget means no verdict can arrive in time.
      if (err instanceof DependencyUnavailableError || err instanceof DependencyTimeoutError)
        throw new ConnectError(err.message, Code.DeadlineExceeded, undefined, undefined, err);
      throw err;
    }
  };
  const common = {
    baseUrl: options.url,
    httpVersion: "2" as const,
    interceptors: [...(deps.interceptors ?? []), verify, guard],
    ...(deps.tls && options.url.startsWith("https:") ? { nodeOptions: deps.tls } : {}),
  };
  const transport = options.protocol === "grpc" ? createGrpcTransport(common) : createConnectTransport(common);
  return createClient(DataGovernanceService, transport);
}
