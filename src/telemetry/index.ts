/**
 * The telemetry layer's public surface: logging, tracing and metrics, and the interceptors and wrappers that
 * instrument the layers below.
 */
export { connectTracingInterceptor } from "./connect-tracing-interceptor.js";
export { type Logger, createLogger } from "./logger.js";
export { createRedactingDestination, scrubRulesFrom } from "./redacting-destination.js";
export { registerGrpcInstrumentation } from "./register-instrumentation.js";
export { rpcMetricsInterceptor } from "./rpc-metrics-interceptor.js";
export { resolveTelemetryOptions, type TelemetryOptions } from "./telemetry-options.js";
export { createTally, type Tally } from "./tally.js";
export { createTelemetry } from "./telemetry.js";
export {
  injectTraceHeaders,
  contextFromTraceparent,
  currentTraceparent,
  extractTraceContext,
  startConsumerSpan,
  startProducerSpan,
} from "./trace-context.js";
export { traceDatabaseTransactions } from "./trace-database-transactions.js";
export { tracingEventSink } from "./tracing-event-sink.js";
export { tracingInterceptor } from "./tracing-interceptor.js";
