import { checkServerIdentity as tlsCheckServerIdentity, type PeerCertificate } from "node:tls";
import { createClient, type Client, type Interceptor, type Transport } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { context as otelContext, propagation } from "@opentelemetry/api";
import { W3CTraceContextPropagator } from "@opentelemetry/core";
import { AgentRegistryService } from "./gen/nops/kernel/v1/agent_registry_pb.js";
import { ApiKeyService } from "./gen/nops/kernel/v1/api_key_pb.js";
import { EventBusService } from "./gen/nops/kernel/v1/event_bus_pb.js";
import { RoutingService } from "./gen/nops/kernel/v1/routing_pb.js";
import type { IdentityProvider, TlsIdentity } from "./identity.js";

/** Typed clients of the kernel services an agent uses. */
export interface KernelClients {
  registry: Client<typeof AgentRegistryService>;
  events: Client<typeof EventBusService>;
  routing: Client<typeof RoutingService>;
  apiKeys: Client<typeof ApiKeyService>;
}

/** The agent's connection to the kernel: clients that follow SVID rotation and API key swaps. */
export interface KernelConnection extends KernelClients {
  /** The API key calls carry now, if any. */
  apiKey(): string | undefined;
  /** Swaps the API key for every later call (in-flight calls keep the one they were sent with). */
  setApiKey(key: string): void;
  close(): void;
}

/** How the connection authenticates and where it goes. */
export interface KernelConnectionOptions {
  /** https://host:port of the kernel (its gRPC port for SVID callers, its HTTP port for API keys), or http:// for a plaintext dev kernel. */
  url: string;
  /** When set, calls carry `x-api-key` and present no client certificate (the key decides). */
  apiKey?: string;
  /** Trust anchors for the kernel's certificate when there is no identity provider (API key without SVID). */
  caPem?: string;
}

const w3c = new W3CTraceContextPropagator();

// The trace of whatever the agent is doing continues into the kernel: inject traceparent from the
// active context with the W3C propagator, whatever global propagator the application installed.
const traceInterceptor: Interceptor = (next) => async (req) => {
  if (!req.header.has("traceparent")) {
    w3c.inject(otelContext.active(), req.header, {
      set: (carrier: Headers, key: string, value: string) => carrier.set(key, value),
    });
    propagation.inject(otelContext.active(), req.header, {
      set: (carrier: Headers, key: string, value: string) => {
        if (!carrier.has(key)) carrier.set(key, value);
      },
    });
  }
  return next(req);
};

// A SPIFFE kernel is identified by its SPIFFE ID under /nops/kernel/ in the agent's trust domain
// (X509-SVID §5.2); the chain itself was already verified against the bundle by TLS. A kernel
// certificate without one falls back to the usual host name check.
function checkKernelIdentity(trustDomain: string | undefined) {
  return (host: string, cert: PeerCertificate): Error | undefined => {
    const uris = (cert.subjectaltname ?? "")
      .split(", ")
      .filter((s) => s.startsWith("URI:"))
      .map((s) => s.slice(4));
    if (trustDomain && uris.some((u) => u.startsWith(`spiffe://${trustDomain}/nops/kernel/`))) return undefined;
    return tlsCheckServerIdentity(host, cert);
  };
}

const trustDomainOf = (spiffeId: string) => /^spiffe:\/\/([^/]+)/.exec(spiffeId)?.[1];

/** Opens the kernel connection; the transport is rebuilt on every new SVID (new calls, new handshakes). */
export function createKernelConnection(
  identity: IdentityProvider | undefined,
  options: KernelConnectionOptions,
): KernelConnection {
  let apiKey = options.apiKey;
  const auth: Interceptor = (next) => async (req) => {
    if (apiKey !== undefined) req.header.set("x-api-key", apiKey);
    return next(req);
  };
  const plaintext = options.url.startsWith("http://");
  const build = (id: TlsIdentity | undefined): Transport =>
    createGrpcTransport({
      baseUrl: options.url,
      interceptors: [traceInterceptor, auth],
      // Sessions of a replaced transport close once idle, so rotation leaks nothing.
      idleConnectionTimeoutMs: 30_000,
      nodeOptions: plaintext
        ? {}
        : {
            ca: id?.bundlePem ?? options.caPem,
            // An API key caller presents no certificate: the kernel takes the first credential it sees.
            ...(id && apiKey === undefined ? { cert: id.certPem, key: id.keyPem } : {}),
            checkServerIdentity: checkKernelIdentity(id ? trustDomainOf(id.spiffeId) : undefined),
          },
    });
  let current = build(identity && !plaintext ? identity.current() : undefined);
  const unsubscribe = identity?.onUpdate((id) => {
    if (!plaintext) current = build(id);
  });
  const delegating: Transport = {
    unary: (...args) => current.unary(...args),
    stream: (...args) => current.stream(...args),
  };
  return {
    registry: createClient(AgentRegistryService, delegating),
    events: createClient(EventBusService, delegating),
    routing: createClient(RoutingService, delegating),
    apiKeys: createClient(ApiKeyService, delegating),
    apiKey: () => apiKey,
    setApiKey(key) {
      apiKey = key;
    },
    close() {
      unsubscribe?.();
    },
  };
}
