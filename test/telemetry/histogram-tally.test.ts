import test from "ava";
import type { Attributes, Meter } from "@opentelemetry/api";
import { PrometheusExporter, PrometheusSerializer } from "@opentelemetry/exporter-prometheus";
import { MeterProvider, createDenyListAttributesProcessor } from "@opentelemetry/sdk-metrics";
import { createSilentLogger } from "../../src/telemetry/logger.js";
import { createTelemetry } from "../../src/telemetry/telemetry.js";
import { DEFAULT_TELEMETRY_OPTIONS } from "../../src/telemetry/telemetry-options.js";
import { parsePrometheusText, sample } from "./prometheus-text.js";

// The lines of one metric family in a Prometheus text.
const family = (text: string, name: string): string[] =>
  text.split("\n").filter((l) => {
    const metric = l.startsWith("#") ? l.split(" ")[2] : /^[^{ ]+/.exec(l)?.[0];
    return metric === name || metric === `${name}_bucket` || metric === `${name}_sum` || metric === `${name}_count`;
  });

// The same measurements into sdk-metrics' own histogram (the reference) and into the kernel's meter.
function recordInto(meter: Meter): void {
  const advised = meter.createHistogram("test_rpc_ms", {
    description: "RPC latency",
    unit: "ms",
    advice: { explicitBucketBoundaries: [10, 0.5, 1, 5] },
  });
  const fixed: Attributes = Object.freeze({ rpc: "/a", code: "OK" });
  // On a boundary (a bucket's upper bound is inclusive), between, past the last, ignored (negative, NaN).
  for (const v of [0, 0.5, 0.7, 1, 5, 9.99, 10, 11, 500, -1, NaN]) advised.record(v, fixed);
  // A fresh, unfrozen object each time, keys in another order: the same series.
  advised.record(3, { code: "OK", rpc: "/a" });
  advised.record(2, { rpc: "/b", code: "INTERNAL" });
  // The tenant label is dropped by default: these add up with the series of the same rpc and code.
  advised.record(4, { rpc: "/a", code: "OK", tenant: "acme" });
  advised.record(6, Object.freeze({ rpc: "/a", code: "OK", tenant: "globex" }));
  // No advice: sdk-metrics' default boundaries; no attributes.
  const plain = meter.createHistogram("test_plain_ms", { description: "plain" });
  for (const v of [0, 3, 75, 80, 10_000, 20_000]) plain.record(v);
}

test("histogram tally - /metrics shows what sdk-metrics' own histogram would: buckets, sum, count, folded tenant", async (t) => {
  const telemetry = createTelemetry(DEFAULT_TELEMETRY_OPTIONS, { logger: createSilentLogger() });
  const exporter = new PrometheusExporter({ preventServerStart: true, withoutScopeInfo: true });
  const reference = new MeterProvider({
    readers: [exporter],
    views: [{ instrumentName: "*", attributesProcessors: [createDenyListAttributesProcessor(["tenant"])] }],
  });
  t.teardown(async () => {
    await telemetry.shutdown();
    await reference.shutdown();
  });
  recordInto(telemetry.meter("test"));
  recordInto(reference.getMeter("test"));
  const expected = new PrometheusSerializer("", false, undefined, false, true).serialize(
    (await exporter.collect()).resourceMetrics,
  );
  const actual = await telemetry.metricsText();
  for (const name of ["test_rpc_ms", "test_plain_ms"]) {
    t.true(family(expected, name).length > 4, `the reference has ${name}`);
    t.deepEqual(family(actual, name), family(expected, name), name);
  }
  const families = parsePrometheusText(actual);
  t.is(sample(families, "test_rpc_ms_count", { rpc: "/a", code: "OK" }), 12);
  t.is(sample(families, "test_rpc_ms_bucket", { rpc: "/a", code: "OK", le: "0.5" }), 2);
  t.is(sample(families, "test_rpc_ms_bucket", { rpc: "/a", code: "OK", le: "+Inf" }), 12);
});

test("histogram tally - tenant labels kept when the operator asks; past maxSeries new series count in the overflow", async (t) => {
  const telemetry = createTelemetry(
    { ...DEFAULT_TELEMETRY_OPTIONS, metrics: { ...DEFAULT_TELEMETRY_OPTIONS.metrics, tenantLabels: true } },
    { logger: createSilentLogger() },
  );
  t.teardown(() => telemetry.shutdown());
  const h = telemetry.meter("test").createHistogram("test_tenant_ms", { description: "per tenant" });
  for (let i = 0; i < 2100; i++) h.record(1, { tenant: `t${i}` });
  h.record(1, { tenant: "t0" });
  const families = parsePrometheusText(await telemetry.metricsText());
  t.is(sample(families, "test_tenant_ms_count", { tenant: "t0" }), 2, "a known series keeps counting");
  t.is(sample(families, "test_tenant_ms_count", { otel_metric_overflow: "true" }), 2100 - 1999);
  const counts = families.get("test_tenant_ms")?.samples.filter((s) => s.name === "test_tenant_ms_count");
  t.is(counts?.length, 2000, "1999 series and the overflow");
});
