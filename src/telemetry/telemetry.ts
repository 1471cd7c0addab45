import {
  DiagLogLevel,
  ProxyTracerProvider,
  context,
  diag,
  propagation,
  trace,
  type Meter,
  type Tracer,
} from "@opentelemetry/api";
import { OTLPTraceExporter } from "@opentelemetry/exporter-trace-otlp-http";
import { PrometheusExporter, PrometheusSerializer } from "@opentelemetry/exporter-prometheus";
import type { GrpcInstrumentation } from "@opentelemetry/instrumentation-grpc";
import { resourceFromAttributes } from "@opentelemetry/resources";
import { MeterProvider, createDenyListAttributesProcessor } from "@opentelemetry/sdk-metrics";
import { createHistogramTallies } from "./histogram-tally.js";
import {
  BatchSpanProcessor,
  NodeTracerProvider,
  ParentBasedSampler,
  TraceIdRatioBasedSampler,
  type SpanExporter,
} from "@opentelemetry/sdk-trace-node";
import type { HttpRoute } from "../server/index.js";
import type { Logger } from "./logger.js";
import type { TelemetryOptions } from "./telemetry-options.js";

/** What createTelemetry needs besides its options. */
export interface TelemetryDeps {
  logger: Logger;
  /** service.version resource attribute. @default "unknown" */
  serviceVersion?: string;
  /** The instrumentation registerGrpcInstrumentation() enabled, if the entry point loaded it. */
  grpcInstrumentation?: GrpcInstrumentation;
  /** Replaces the exporter options.tracing.exporter names and turns tracing on (tests, bench). */
  spanExporter?: SpanExporter;
}

/** The kernel's tracing and metrics. */
export interface Telemetry {
  /** Present when tracing is on (an exporter is configured). */
  readonly tracerProvider?: NodeTracerProvider;
  readonly meterProvider: MeterProvider;
  /** A tracer of the provider; a no-op tracer when tracing is off. */
  tracer(name: string): Tracer;
  /** A meter of the provider (pass it to components in deps). */
  meter(name: string): Meter;
  /** GET /metrics: the Prometheus text exposition of every instrument. */
  readonly metricsHandler: HttpRoute;
  /** The Prometheus text exposition, as metricsHandler serves it. */
  metricsText(): Promise<string>;
  /** Exports the spans still buffered. */
  forceFlush(): Promise<void>;
  /** Flushes and stops both providers and releases the OpenTelemetry globals it registered. */
  shutdown(): Promise<void>;
}

/** Content type of the Prometheus text format 0.0.4. */
export const PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8";

/**
 * Creates the meter provider (Prometheus reader without its own server: the kernel serves
 * /metrics) and, when an exporter is configured, the tracer provider.
 *
 * With tracing on, the provider is registered as the OpenTelemetry global together with the
 * AsyncLocalStorage context manager and the W3C propagator: context propagation across awaits
 * and instrumentation-grpc only work through those globals. With tracing off nothing global is
 * touched and instrumentation-grpc is disabled (its patches removed), so it costs nothing.
 */
export function createTelemetry(options: TelemetryOptions, deps: TelemetryDeps): Telemetry {
  const log = deps.logger.child({ component: "telemetry" });
  const resource = resourceFromAttributes({
    "service.name": options.serviceName,
    "service.version": deps.serviceVersion ?? "unknown",
  });

  // Tenant names stay out of /metrics unless the operator keeps them (telemetry.metrics.tenantLabels).
  const dropAttributes = options.metrics.tenantLabels ? [] : ["tenant"];
  const views = dropAttributes.length
    ? [{ instrumentName: "*", attributesProcessors: [createDenyListAttributesProcessor(dropAttributes)] }]
    : [];
  // The meters' histograms are summed in process (histogram-tally.ts) and read with the SDK's instruments.
  const histograms = createHistogramTallies({ resource, dropAttributes });
  const prometheus = new PrometheusExporter({
    preventServerStart: true,
    withoutScopeInfo: true,
    metricProducers: [histograms],
  });
  const serializer = new PrometheusSerializer("", false, undefined, false, true);
  const meterProvider = new MeterProvider({ resource, readers: [prometheus], views });

  const t = options.tracing;
  const exporter: SpanExporter | undefined =
    deps.spanExporter ??
    (t.exporter === "otlp"
      ? new OTLPTraceExporter({ url: t.otlpEndpoint, timeoutMillis: t.exportTimeoutMs })
      : undefined);
  let tracerProvider: NodeTracerProvider | undefined;
  if (exporter) {
    tracerProvider = new NodeTracerProvider({
      resource,
      sampler: new ParentBasedSampler({ root: new TraceIdRatioBasedSampler(t.sampleRatio) }),
      spanProcessors: [
        new BatchSpanProcessor(exporter, {
          maxQueueSize: t.maxQueueSize,
          maxExportBatchSize: t.maxExportBatchSize,
          scheduledDelayMillis: t.scheduledDelayMs,
          exportTimeoutMillis: t.exportTimeoutMs,
        }),
      ],
    });
    tracerProvider.register();
    // Export failures surface through diag; without a logger they would vanish.
    diag.setLogger(
      {
        error: (message, ...args) => log.warn({ args }, message),
        warn: (message, ...args) => log.warn({ args }, message),
        info: () => undefined,
        debug: () => undefined,
        verbose: () => undefined,
      },
      DiagLogLevel.WARN,
    );
    deps.grpcInstrumentation?.setTracerProvider(tracerProvider);
    // enable() re-applies the patches to the already loaded grpc-js after an earlier disable().
    deps.grpcInstrumentation?.enable();
    log.info(
      {
        exporter: deps.spanExporter ? "injected" : t.exporter,
        endpoint: deps.spanExporter ? undefined : t.otlpEndpoint,
        sampleRatio: t.sampleRatio,
      },
      "tracing on",
    );
  } else {
    deps.grpcInstrumentation?.disable();
  }

  const metricsText = async (): Promise<string> => {
    const { resourceMetrics, errors } = await prometheus.collect();
    if (errors.length) log.warn({ errors: errors.map(String) }, "metrics collection errors");
    return serializer.serialize(resourceMetrics);
  };
  const metricsHandler: HttpRoute = (req, res) => {
    if (req.method !== undefined && req.method !== "GET" && req.method !== "HEAD") {
      res.writeHead(405, { "content-type": "text/plain", allow: "GET, HEAD" });
      res.end("method not allowed\n");
      return;
    }
    metricsText().then(
      (text) => {
        res.writeHead(200, { "content-type": PROMETHEUS_CONTENT_TYPE, "cache-control": "no-store" });
        res.end(req.method === "HEAD" ? "" : text);
      },
      (err: unknown) => {
        log.error({ err }, "metrics export failed");
        res.writeHead(500, { "content-type": "text/plain" });
        res.end("metrics export failed\n");
      },
    );
  };

  // A proxy without a delegate hands out no-op tracers, whatever the global holds.
  const noopTracers = new ProxyTracerProvider();
  let stopped: Promise<void> | undefined;
  return {
    ...(tracerProvider ? { tracerProvider } : {}),
    meterProvider,
    tracer: (name) => (tracerProvider ?? noopTracers).getTracer(name),
    meter: (name) => histograms.wrap(meterProvider.getMeter(name), name),
    metricsHandler,
    metricsText,
    forceFlush: async () => {
      await tracerProvider?.forceFlush();
    },
    shutdown: () =>
      (stopped ??= (async () => {
        await Promise.allSettled([tracerProvider?.shutdown(), meterProvider.shutdown()]);
        if (tracerProvider) {
          deps.grpcInstrumentation?.disable();
          trace.disable();
          context.disable();
          propagation.disable();
          diag.disable();
        }
      })()),
  };
}
