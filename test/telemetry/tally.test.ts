import test from "ava";
import { createSilentLogger } from "../../src/telemetry/logger.js";
import { DEFAULT_TALLY_MAX_SERIES, createTally } from "../../src/telemetry/tally.js";
import { createTelemetry } from "../../src/telemetry/telemetry.js";
import { DEFAULT_TELEMETRY_OPTIONS } from "../../src/telemetry/telemetry-options.js";
import { makeMeter } from "../fixtures/dge-helpers.js";
import { parsePrometheusText, sample } from "./prometheus-text.js";

const OVERFLOW = { "otel.metric.overflow": true };

test("tally - sums per series, one series per distinct label tuple", async (t) => {
  const metrics = makeMeter();
  t.teardown(() => metrics.provider.shutdown());
  const tally = createTally(metrics.provider.getMeter("test"), "test_calls_total", {
    labels: ["rpc", "code"],
    description: "calls",
  });
  tally.add(1, "/a", "OK");
  tally.add(2, "/a", "OK");
  tally.add(1, "/a", "INTERNAL");
  tally.add(5, "/b", "OK");
  tally.add(-3, "/b", "OK"); // a counter only goes up
  tally.add(NaN, "/b", "OK");
  t.deepEqual(
    (await metrics.collect()).get("test_calls_total")?.map((p) => [p.attributes, p.value]),
    [
      [{ rpc: "/a", code: "OK" }, 3],
      [{ rpc: "/a", code: "INTERNAL" }, 1],
      [{ rpc: "/b", code: "OK" }, 5],
    ],
  );
  tally.add(1, "/a", "OK");
  t.deepEqual((await metrics.collect()).get("test_calls_total")?.[0]?.value, 4, "collections report running totals");
});

test("tally - Prometheus exposes it as a counter under its own name, description and labels", async (t) => {
  const telemetry = createTelemetry(DEFAULT_TELEMETRY_OPTIONS, { logger: createSilentLogger() });
  t.teardown(() => telemetry.shutdown());
  const tally = createTally(telemetry.meter("test"), "test_calls_total", {
    labels: ["rpc", "code", "transport"],
    description: "RPCs served",
  });
  tally.add(1, "/a", "OK", "grpc-js");
  tally.add(1, "/a", "OK", "grpc-js");
  const text = await telemetry.metricsText();
  t.regex(text, /^# HELP test_calls_total RPCs served$/m);
  t.regex(text, /^# TYPE test_calls_total counter$/m);
  const families = parsePrometheusText(text);
  t.is(sample(families, "test_calls_total", { rpc: "/a", code: "OK", transport: "grpc-js" }), 2);
  // The exporter appends _total to a monotonic sum that lacks it, as it does for a Counter.
  createTally(telemetry.meter("test"), "test_plain", { labels: ["kind"], description: "plain" }).add(7, "x");
  t.is(sample(parsePrometheusText(await telemetry.metricsText()), "test_plain_total", { kind: "x" }), 7);
});

test("tally - past maxSeries new label tuples count in the overflow series, known ones keep counting", async (t) => {
  const metrics = makeMeter();
  t.teardown(() => metrics.provider.shutdown());
  const tally = createTally(metrics.provider.getMeter("test"), "test_hostile_total", {
    labels: ["tenant", "result"],
    description: "hostile",
    maxSeries: 4,
  });
  for (let i = 0; i < 1000; i++) tally.add(1, `tenant-${i}`, "allowed");
  tally.add(10, "tenant-0", "allowed");
  t.deepEqual(
    tally.add(1, "tenant-0", "blocked"), // a new tuple under a known first value overflows too
    OVERFLOW,
    "add() returns the attributes of the series it counted in",
  );
  t.deepEqual(
    (await metrics.collect()).get("test_hostile_total")?.map((p) => [p.attributes, p.value]),
    [
      [{ tenant: "tenant-0", result: "allowed" }, 11],
      [{ tenant: "tenant-1", result: "allowed" }, 1],
      [{ tenant: "tenant-2", result: "allowed" }, 1],
      [OVERFLOW, 998],
    ],
  );
});

test("tally - the default bound is sdk-metrics' cardinality limit, so the SDK folds nothing more", async (t) => {
  const metrics = makeMeter();
  t.teardown(() => metrics.provider.shutdown());
  const tally = createTally(metrics.provider.getMeter("test"), "test_many_total", {
    labels: ["id"],
    description: "many",
  });
  const n = DEFAULT_TALLY_MAX_SERIES + 500;
  for (let i = 0; i < n; i++) tally.add(1, String(i));
  const points = (await metrics.collect()).get("test_many_total") ?? [];
  t.is(DEFAULT_TALLY_MAX_SERIES, 2000);
  t.is(points.length, DEFAULT_TALLY_MAX_SERIES);
  t.is(points.filter((p) => p.value === 1).length, DEFAULT_TALLY_MAX_SERIES - 1);
  t.deepEqual(
    points.filter((p) => "otel.metric.overflow" in p.attributes).map((p) => p.value),
    [n - (DEFAULT_TALLY_MAX_SERIES - 1)],
  );
});

test("tally - omitted labels add up, where a view dropping them keeps only the last series", async (t) => {
  // Why `omit` exists: sdk-metrics applies a view's attributes processor to observed values but
  // keeps the last of the series it merges (AsyncMetricStorage.record), not their sum.
  const metrics = makeMeter();
  t.teardown(() => metrics.provider.shutdown());
  const omitted = createTally(metrics.provider.getMeter("test"), "test_omitted_total", {
    labels: ["result", "tenant", "tier"],
    description: "omitted",
    omit: ["tenant"],
  });
  omitted.add(2, "allowed", "globex", "1");
  omitted.add(3, "allowed", "acme", "1");
  omitted.add(1, "blocked", "acme", "2");
  t.deepEqual(
    (await metrics.collect()).get("test_omitted_total")?.map((p) => [p.attributes, p.value]),
    [
      [{ result: "allowed", tier: "1" }, 5],
      [{ result: "blocked", tier: "2" }, 1],
    ],
  );

  // The kernel's default view (telemetry.metrics.tenantLabels off) without `omit`: 3, not 5.
  const telemetry = createTelemetry(DEFAULT_TELEMETRY_OPTIONS, { logger: createSilentLogger() });
  t.teardown(() => telemetry.shutdown());
  const viewed = createTally(telemetry.meter("test"), "test_viewed_total", {
    labels: ["result", "tenant", "tier"],
    description: "viewed",
  });
  viewed.add(2, "allowed", "globex", "1");
  viewed.add(3, "allowed", "acme", "1");
  const text = await telemetry.metricsText();
  t.false(/tenant=/.test(text));
  t.is(sample(parsePrometheusText(text), "test_viewed_total", { result: "allowed", tier: "1" }), 3);
});

test("tally - add() returns its series' attributes, one frozen object per series", (t) => {
  const metrics = makeMeter();
  t.teardown(() => metrics.provider.shutdown());
  const tally = createTally(metrics.provider.getMeter("test"), "test_attrs_total", {
    labels: ["rpc", "tenant", "code"],
    description: "attributes",
    omit: ["tenant"],
  });
  const first = tally.add(1, "/a", "acme", "OK");
  t.deepEqual(first, { rpc: "/a", code: "OK" });
  t.true(Object.isFrozen(first));
  t.is(tally.add(1, "/a", "globex", "OK"), first, "an omitted label's value does not make a new series");
  t.not(tally.add(1, "/a", "acme", "INTERNAL"), first);
});

test("tally - rejects more than four labels, every label omitted and a bound below one", (t) => {
  const metrics = makeMeter();
  t.teardown(() => metrics.provider.shutdown());
  const meter = metrics.provider.getMeter("test");
  t.throws(() => createTally(meter, "x", { labels: ["a", "b", "c", "d", "e"], description: "x" }), {
    message: /at most 4 labels/,
  });
  t.throws(() => createTally(meter, "z", { labels: ["a"], description: "z", omit: ["a"] }), {
    message: /every label is omitted/,
  });
  t.throws(() => createTally(meter, "y", { labels: ["a"], description: "y", maxSeries: 0 }), {
    message: /maxSeries/,
  });
});
