import { Code, ConnectError } from "@connectrpc/connect";
import test from "ava";
import { createManualClock } from "../../src/common/clock.js";
import { createBillingClient, createDgeClient, createInferenceClient } from "../../src/clients/index.js";
import { createEgressGuard, resolveEgressGuardOptions } from "../../src/egress/egress-guard.js";
import { DGE_KEYS, makeMeter, makeStore, silent } from "../fixtures/dge-helpers.js";

test("approved clients - calls go through the guard: denied calls never reach fetch, allowed ones do", async (t) => {
  const clock = createManualClock();
  const store = makeStore(clock);
  const sent: string[] = [];
  const fakeFetch = (async (url: URL | string) => {
    sent.push(String(url));
    return new Response(JSON.stringify({ ok: true }), { status: 200 });
  }) as typeof fetch;
  // DGE disabled for "acme" (allow with warning); "bunker" is air-gapped (always denied).
  const guard = createEgressGuard(
    {
      clock,
      logger: silent,
      meter: makeMeter().provider.getMeter("t"),
      dge: createDgeClient(
        { clock },
        { url: "http://127.0.0.1:9", protocol: "grpc", keys: DGE_KEYS, maxSkewMs: 300_000 },
      ),
      events: store.events,
      audit: store.audit,
      db: store.db,
    },
    resolveEgressGuardOptions({ dgeEnabled: false, tenantTiers: { acme: 1, bunker: "air-gapped" } }),
  );
  t.teardown(() => guard.close());
  const billing = createBillingClient({ guard, fetch: fakeFetch }, { baseUrl: "https://billing.example/" });
  const inference = createInferenceClient({ guard, fetch: fakeFetch }, { baseUrl: "https://inference.example" });
  t.deepEqual(await billing.reportUsage("acme", { units: 3 }), { ok: true });
  const err = await t.throwsAsync(inference.complete("bunker", { prompt: "hello" }));
  t.is(ConnectError.from(err).code, Code.PermissionDenied);
  t.deepEqual(sent, ["https://billing.example/v1/usage"]);
});
