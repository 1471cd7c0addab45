import { createSilentLogger } from "../../../src/telemetry/logger.js";
import { createX509SourceState, type X509Context, type X509Source } from "../../../src/identity/spiffe/x509-source.js";
import { parseX509Svid } from "../../../src/identity/spiffe/x509-svid.js";
import { createX509Bundle, createX509BundleSet } from "../../../src/identity/spiffe/x509-bundle.js";
import type { TestCa, TestSvid } from "../../helpers/test-ca.js";
import { MeterProvider, MetricReader } from "@opentelemetry/sdk-metrics";
import type { Meter } from "@opentelemetry/api";

class CollectingReader extends MetricReader {
  protected override async onForceFlush(): Promise<void> {}
  protected override async onShutdown(): Promise<void> {}
}

/** A private meter plus a way to read a counter's total (no global provider). */
export function createTestMeter(): { meter: Meter; counter(name: string): Promise<number> } {
  const reader = new CollectingReader();
  const provider = new MeterProvider({ readers: [reader] });
  return {
    meter: provider.getMeter("test"),
    async counter(name) {
      const { resourceMetrics } = await reader.collect();
      let total = 0;
      for (const scope of resourceMetrics.scopeMetrics) {
        for (const metric of scope.metrics) {
          if (metric.descriptor.name !== name) continue;
          for (const point of metric.dataPoints) total += point.value as number;
        }
      }
      return total;
    },
  };
}

/** Polls `check` until it returns true or the deadline passes (no fixed sleeps in tests). */
export async function waitFor(
  check: () => boolean | Promise<boolean>,
  what: string,
  timeoutMs = 20_000,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await check()) return;
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error(`timed out waiting for ${what}`);
}

/** Builds an X509Context from a test SVID and the CAs whose bundles it trusts (one per trust domain). */
export function contextOf(svid: TestSvid, trusted: readonly TestCa[]): X509Context {
  const byTd = new Map<string, Uint8Array[]>();
  for (const ca of trusted) byTd.set(ca.trustDomain, [...(byTd.get(ca.trustDomain) ?? []), ca.certDer]);
  return {
    svid: parseX509Svid({ chain: svid.chainDer, key: svid.keyDer }),
    bundles: createX509BundleSet([...byTd].map(([td, ders]) => createX509Bundle(td, ders))),
  };
}

/** An in-memory X509Source the test drives with `set`. */
export function createStaticSource(initial: X509Context): X509Source & { set(c: X509Context): void } {
  const state = createX509SourceState(createSilentLogger());
  state.publish(initial);
  return {
    current: () => state.current(),
    ready: () => state.ready(),
    onUpdate: (l) => state.onUpdate(l),
    set: (c) => state.publish(c),
    close: async () => state.stop(new Error("closed")),
  };
}
