import test from "ava";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { DataGovernanceService } from "../../gen/nops/dge/v1/dge_pb.js";
import { createManualClock } from "../../src/common/clock.js";
import { createEgressGuard, resolveEgressGuardOptions } from "../../src/egress/egress-guard.js";
import { createSilentLogger } from "../../src/telemetry/logger.js";
import { createTelemetry } from "../../src/telemetry/telemetry.js";
import { resolveTelemetryOptions } from "../../src/telemetry/telemetry-options.js";
import { makeStore } from "../fixtures/dge-helpers.js";
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

// The guard's counter is an observable one (src/telemetry/tally.ts): the view drops its tenant
// label too, but would keep one tenant's count instead of the sum, so the guard sums them itself.
async function guardExposition(tenantLabels?: boolean): Promise<string> {
  const options = resolveTelemetryOptions(tenantLabels === undefined ? {} : { metrics: { tenantLabels } });
  const logger = createSilentLogger();
  const telemetry = createTelemetry(options, { logger });
  const store = makeStore();
  const guard = createEgressGuard(
    {
      clock: createManualClock(1_700_000_000_000),
      logger,
      meter: telemetry.meter("nops-kernel"),
      events: store.events,
      audit: store.audit,
      db: store.db,
      // Nothing listens on port 9 of loopback: every call is blocked, failing closed.
      dge: createClient(
        DataGovernanceService,
        createConnectTransport({ baseUrl: "http://127.0.0.1:9", httpVersion: "1.1" }),
      ),
      // As the kernel wires it (src/kernel/start-kernel.ts).
      tenantLabels: options.metrics.tenantLabels,
    },
    resolveEgressGuardOptions({ dgeTimeoutMs: 50, tenantTiers: { acme: 1, "globex-secret-project": 1 } }),
  );
  try {
    for (const tenant of ["globex-secret-project", "globex-secret-project", "acme", "acme", "acme"]) {
      const decision = await guard.check({
        tenant,
        transport: "http",
        destination: "https://example.com/x",
        dataType: "application/json",
        payload: "{}",
      });
      if (decision.allowed) throw new Error("the guard allowed a call without a DGE");
    }
    return await telemetry.metricsText();
  } finally {
    await guard.close();
    store.db.close();
    await telemetry.shutdown();
  }
}

test("metrics tenants - the Egress Guard's requests counter adds its tenants up and names none", async (t) => {
  const text = await guardExposition();
  t.false(text.includes("globex-secret-project"));
  t.false(/tenant=/.test(text));
  t.is(sample(parsePrometheusText(text), "egress_guard_requests_total", { result: "blocked", tier: "1" }), 5);
});

test("metrics tenants - the Egress Guard's requests counter keeps tenants with tenantLabels", async (t) => {
  const families = parsePrometheusText(await guardExposition(true));
  const labels = { result: "blocked", tier: "1" };
  t.is(sample(families, "egress_guard_requests_total", { ...labels, tenant: "globex-secret-project" }), 2);
  t.is(sample(families, "egress_guard_requests_total", { ...labels, tenant: "acme" }), 3);
});
