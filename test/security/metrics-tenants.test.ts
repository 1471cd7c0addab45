import test from "ava";
import { createSilentLogger } from "../../src/telemetry/logger.js";
import { createTelemetry } from "../../src/telemetry/telemetry.js";
import { resolveTelemetryOptions } from "../../src/telemetry/telemetry-options.js";
import { parsePrometheusText, sample } from "../telemetry/prometheus-text.js";

// Issue 13 item 18: /metrics names no tenant unless the operator configured it.

async function exposition(tenantLabels?: boolean): Promise<string> {
  const options = resolveTelemetryOptions(tenantLabels === undefined ? {} : { metrics: { tenantLabels } });
  const telemetry = createTelemetry(options, { logger: createSilentLogger() });
  try {
    const counter = telemetry.meter("test").createCounter("egress_guard_requests_total");
    counter.add(2, { result: "allowed", tenant: "globex-secret-project", tier: "1" });
    counter.add(3, { result: "allowed", tenant: "acme", tier: "1" });
    return await telemetry.metricsText();
  } finally {
    await telemetry.shutdown();
  }
}

test("metrics tenants - by default the tenant label is dropped and the series add up", async (t) => {
  const text = await exposition();
  t.false(text.includes("globex-secret-project"));
  t.false(/tenant=/.test(text));
  t.is(sample(parsePrometheusText(text), "egress_guard_requests_total", { result: "allowed", tier: "1" }), 5);
});

test("metrics tenants - telemetry.metrics.tenantLabels keeps them", async (t) => {
  const families = parsePrometheusText(await exposition(true));
  const labels = { result: "allowed", tier: "1" };
  t.is(sample(families, "egress_guard_requests_total", { ...labels, tenant: "globex-secret-project" }), 2);
  t.is(sample(families, "egress_guard_requests_total", { ...labels, tenant: "acme" }), 3);
  t.throws(() => resolveTelemetryOptions({ metrics: { tenantLabels: "yes" } }), { message: /telemetry\.metrics/ });
});
