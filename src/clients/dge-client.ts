import type * as http2 from "node:http2";
import { toBinary } from "@bufbuild/protobuf";
import { createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport } from "@connectrpc/connect-node";
import { type Clock, ConfigError, readInt, readSection, readString } from "../common/index.js";
import { DataGovernanceService } from "../../gen/nops/dge/v1/dge_pb.js";
import { createDgeSignatureVerifier, DEFAULT_DGE_MAX_SKEW_MS, DGE_SIGNATURE_HEADER } from "../dge/index.js";

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

/** What the DGE client needs. */
export interface DgeClientDeps {
  clock: Clock;
  /** TLS material for https URLs (the kernel's SVID and trust bundle when mTLS is on). */
  tls?: Pick<http2.SecureClientSessionOptions, "ca" | "cert" | "key" | "servername" | "checkServerIdentity">;
  /** Run before the signature check, outermost first (e.g. the tracing interceptor that propagates trace context). */
  interceptors?: Interceptor[];
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
  const common = {
    baseUrl: options.url,
    httpVersion: "2" as const,
    interceptors: [...(deps.interceptors ?? []), verify],
    ...(deps.tls && options.url.startsWith("https:") ? { nodeOptions: deps.tls } : {}),
  };
  const transport = options.protocol === "grpc" ? createGrpcTransport(common) : createConnectTransport(common);
  return createClient(DataGovernanceService, transport);
}
