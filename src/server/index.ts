/** The server layer's public surface: the interceptor chain's vocabulary, the core interceptors and both transports. */
export { bindService, type BoundService } from "./bind-service.js";
export {
  correlationInterceptor,
  deadlineInterceptor,
  errorMappingInterceptor,
  loggingInterceptor,
} from "./core-interceptors.js";
export { createGrpcServer } from "./grpc-server.js";
export { createHealthService } from "./health-service.js";
export { createHttpServer, type HttpRoute, type RawHttpRoute, type RouteRequest } from "./http-server.js";
export {
  clientIp,
  endStreamOnAbort,
  kCorrelationId,
  kLogger,
  kPeer,
  methodPath,
  type CallHandler,
  type CallRequest,
  type CallResult,
  type KernelInterceptor,
  observeStream,
  type PeerInfo,
  withSignal,
} from "./interceptor.js";
export { type LimitOptions } from "./limit-options.js";
export { methodMatches, createMethodMatcher, DEFAULT_PUBLIC_METHODS, checkMethodPattern } from "./method-pattern.js";
export { derChainFromPeerCertificate, MAX_PEER_CHAIN_LENGTH } from "./peer-certificates.js";
export { createReflectionService } from "./reflection-service.js";
export { type CredentialGate, type GateRequest } from "./credential-gate.js";
