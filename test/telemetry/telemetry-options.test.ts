import test from "ava";
import { ConfigError } from "../../src/common/errors.js";
import { DEFAULT_TELEMETRY_OPTIONS, resolveTelemetryOptions } from "../../src/telemetry/telemetry-options.js";

test("telemetry options - defaults keep tracing off", (t) => {
  t.deepEqual(resolveTelemetryOptions({}), DEFAULT_TELEMETRY_OPTIONS);
  t.is(resolveTelemetryOptions(undefined).tracing.exporter, "none");
});

test("telemetry options - OTLP settings are read and bad fields are named", (t) => {
  const o = resolveTelemetryOptions({
    tracing: { exporter: "otlp", otlpEndpoint: "http://collector:4318/v1/traces", sampleRatio: 0.25 },
    redactPatterns: ["\\d{16}"],
  });
  t.is(o.tracing.exporter, "otlp");
  t.is(o.tracing.sampleRatio, 0.25);
  t.deepEqual(o.redactPatterns, ["\\d{16}"]);
  const message = (input: unknown) =>
    t.throws(() => resolveTelemetryOptions(input), { instanceOf: ConfigError })?.message;
  t.is(
    message({ tracing: { exporter: "jaeger" } }),
    'telemetry.tracing.exporter must be one of none, otlp (got "jaeger")',
  );
  t.is(
    message({ tracing: { otlpEndpoint: "collector:4318" } }),
    'telemetry.tracing.otlpEndpoint must be an http(s) URL (got "collector:4318")',
  );
  t.regex(
    message({ tracing: { sampleRatio: 2 } }) ?? "",
    /^telemetry\.tracing\.sampleRatio must be a number from 0 to 1/,
  );
  t.regex(
    message({ tracing: { maxQueueSize: 10, maxExportBatchSize: 20 } }) ?? "",
    /^telemetry\.tracing\.maxExportBatchSize must be <=/,
  );
  t.regex(
    message({ redactPatterns: ["("] }) ?? "",
    /^telemetry\.redactPatterns\[0\] is not a usable regular expression/,
  );
  t.regex(message({ redactPatterns: ["a*"] }) ?? "", /^telemetry\.redactPatterns\[0\] .*empty string/);
  t.regex(message({ tracing: { sampler: "x" } }) ?? "", /telemetry\.tracing\.sampler is not a known option/);
});
