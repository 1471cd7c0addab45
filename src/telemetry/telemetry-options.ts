import {
  ConfigError,
  readBool,
  readInt,
  readNumber,
  readSection,
  readString,
  readStringList,
} from "../common/index.js";

/** Where finished spans go. */
export type TraceExporterKind = "none" | "otlp";

/** Tracing settings. */
export interface TracingOptions {
  /**
   * "none": no tracer provider, no spans, no propagation work on the hot path (the tracing
   * interceptor is left out of the chain). "otlp": OTLP/HTTP (JSON) to `otlpEndpoint`, batched.
   * @default "none"
   */
  exporter: TraceExporterKind;
  /** OTLP/HTTP traces endpoint. @default "http://127.0.0.1:4318/v1/traces" */
  otlpEndpoint: string;
  /** Share of new root traces sampled, 0..1; a sampled caller's decision is always followed. @default 1 */
  sampleRatio: number;
  /** Spans held for export before new ones are dropped. @default 2048 */
  maxQueueSize: number;
  /** Spans per export request. @default 512 */
  maxExportBatchSize: number;
  /** Delay between two exports. @default 2000 */
  scheduledDelayMs: number;
  /** Time an export may take before it is abandoned. @default 10000 */
  exportTimeoutMs: number;
}

/** Telemetry settings (the `telemetry` config section). */
export interface TelemetryOptions {
  /** service.name resource attribute of spans and metrics. @default "nops-kernel" */
  serviceName: string;
  tracing: TracingOptions;
  /**
   * Extra value patterns (JavaScript regex sources) scrubbed from every log line, on top of
   * DEFAULT_SCRUB_RULES (API keys, bearer tokens, JWTs, e-mail addresses). @default []
   */
  redactPatterns: string[];
  metrics: MetricsOptions;
}

/** What /metrics may reveal. */
export interface MetricsOptions {
  /**
   * Keep the `tenant` attribute of every instrument. Off, it is dropped before aggregation: the
   * series of all tenants add up into one, so /metrics (often scraped by a shared Prometheus)
   * names no tenant and its cardinality does not grow with them. A hash would still let anyone
   * with a list of candidate names tell tenants apart. @default false
   */
  tenantLabels: boolean;
}

/** Default tracing settings: off. */
export const DEFAULT_TRACING_OPTIONS: TracingOptions = {
  exporter: "none",
  otlpEndpoint: "http://127.0.0.1:4318/v1/traces",
  sampleRatio: 1,
  maxQueueSize: 2048,
  maxExportBatchSize: 512,
  scheduledDelayMs: 2000,
  exportTimeoutMs: 10_000,
};

/** Default telemetry settings. */
export const DEFAULT_TELEMETRY_OPTIONS: TelemetryOptions = {
  serviceName: "nops-kernel",
  tracing: DEFAULT_TRACING_OPTIONS,
  redactPatterns: [],
  metrics: { tenantLabels: false },
};

/** Validates a partial `telemetry` section and fills defaults; throws ConfigError naming the field. */
export function resolveTelemetryOptions(input: unknown = {}, path = "telemetry"): TelemetryOptions {
  const s = readSection(input, path, DEFAULT_TELEMETRY_OPTIONS);
  const tp = `${path}.tracing`;
  const t = readSection(s.tracing, tp, DEFAULT_TRACING_OPTIONS);
  const d = DEFAULT_TRACING_OPTIONS;
  const otlpEndpoint = readString(t, "otlpEndpoint", tp, d.otlpEndpoint, { nonEmpty: true });
  try {
    const url = new URL(otlpEndpoint);
    if (url.protocol !== "http:" && url.protocol !== "https:") throw new Error("not http(s)");
  } catch {
    throw new ConfigError(`${tp}.otlpEndpoint must be an http(s) URL (got ${JSON.stringify(otlpEndpoint)})`);
  }
  const tracing: TracingOptions = {
    exporter: readString(t, "exporter", tp, d.exporter, { oneOf: ["none", "otlp"] }) as TraceExporterKind,
    otlpEndpoint,
    sampleRatio: readNumber(t, "sampleRatio", tp, d.sampleRatio, 0, 1),
    maxQueueSize: readInt(t, "maxQueueSize", tp, d.maxQueueSize, 1),
    maxExportBatchSize: readInt(t, "maxExportBatchSize", tp, d.maxExportBatchSize, 1),
    scheduledDelayMs: readInt(t, "scheduledDelayMs", tp, d.scheduledDelayMs, 1),
    exportTimeoutMs: readInt(t, "exportTimeoutMs", tp, d.exportTimeoutMs, 1),
  };
  if (tracing.maxExportBatchSize > tracing.maxQueueSize) {
    throw new ConfigError(`${tp}.maxExportBatchSize must be <= ${tp}.maxQueueSize (${tracing.maxQueueSize})`);
  }
  const redactPatterns = readStringList(s, "redactPatterns", path, DEFAULT_TELEMETRY_OPTIONS.redactPatterns);
  redactPatterns.forEach((p, i) => {
    try {
      if (p === "" || new RegExp(p, "g").test("")) throw new Error("matches the empty string");
    } catch (err) {
      throw new ConfigError(
        `${path}.redactPatterns[${i}] is not a usable regular expression: ${(err as Error).message}`,
      );
    }
  });
  return {
    serviceName: readString(s, "serviceName", path, DEFAULT_TELEMETRY_OPTIONS.serviceName, { nonEmpty: true }),
    tracing,
    redactPatterns,
    metrics: {
      tenantLabels: readBool(
        readSection(s.metrics, `${path}.metrics`, DEFAULT_TELEMETRY_OPTIONS.metrics),
        "tenantLabels",
        `${path}.metrics`,
        DEFAULT_TELEMETRY_OPTIONS.metrics.tenantLabels,
      ),
    },
  };
}
