import { Code, ConnectError } from "@connectrpc/connect";
import test from "ava";
import { systemClock } from "../../src/common/clock.js";
import { createDgeClient } from "../../src/clients/dge-client.js";
import { resolveDgeServerOptions, startDgeServer } from "../../packages/reference-dge/src/dge-server.js";
import { Tier, Verdict, EgressClass } from "../../gen/nops/dge/v1/dge_pb.js";
import { DGE_KEYS, silent } from "../fixtures/dge-helpers.js";

test("dge server - classifies, serves per-tenant policies and validates egress over gRPC and Connect, signed", async (t) => {
  const server = await startDgeServer(
    { clock: systemClock, logger: silent },
    resolveDgeServerOptions({
      port: 0,
      keys: DGE_KEYS,
      policies: {
        tenants: { acme: { 2: { maxEgressClass: "D2", allowedPiiTypes: ["email"], allowedDestinations: ["crm*"] } } },
      },
    }),
  );
  t.teardown(() => server.close());
  for (const protocol of ["grpc", "connect"] as const) {
    const c = createDgeClient(
      { clock: systemClock },
      { url: server.url, protocol, keys: DGE_KEYS, maxSkewMs: 300_000 },
    );
    const { classification } = await c.classify({ data: "mail anna@example.com" });
    t.is(classification?.egressClass, EgressClass.D2);
    t.deepEqual(
      classification?.findings.map((f) => [f.span?.start, f.span?.end]),
      [[5, 21]],
    );
    const { policy } = await c.getPolicy({ tenant: "acme", tier: Tier.TIER_2 });
    t.is(policy?.maxEgressClass, EgressClass.D2);
    const ok = await c.validateEgress({
      data: "mail anna@example.com",
      destination: "crm-sync",
      tenant: "acme",
      tier: Tier.TIER_2,
    });
    t.deepEqual([ok.verdict, ok.reasonCode], [Verdict.ALLOW, "allowed"]);
    const wrongDest = await c.validateEgress({
      data: "mail anna@example.com",
      destination: "billing",
      tenant: "acme",
      tier: Tier.TIER_2,
    });
    t.deepEqual([wrongDest.verdict, wrongDest.reasonCode], [Verdict.DENY, "destination_not_allowed"]);
    const tier3 = await c.validateEgress({
      data: "mail anna@example.com",
      destination: "crm-sync",
      tenant: "acme",
      tier: Tier.TIER_3,
    });
    t.deepEqual([tier3.verdict, tier3.reasonCode], [Verdict.DENY, "pii_blocked_tier3"]);
    const err = await t.throwsAsync(c.getPolicy({ tenant: "Bad Tenant", tier: Tier.TIER_1 }));
    t.is(ConnectError.from(err).code, Code.InvalidArgument);
  }
});

test("dge server - options reject bad fields by name", (t) => {
  t.throws(() => resolveDgeServerOptions({ keys: {} }), { message: /dge\.server\.keys/ });
  t.throws(() => resolveDgeServerOptions({ keys: { k: "short" } }), { message: /dge\.server\.keys\.k/ });
  t.throws(() => resolveDgeServerOptions({ keys: DGE_KEYS, policies: { tiers: { 1: { maxEgressClass: "D9" } } } }), {
    message: /dge\.server\.policies\.tiers\.1\.maxEgressClass/,
  });
  t.throws(
    () =>
      resolveDgeServerOptions({ keys: DGE_KEYS, policies: { tenants: { acme: { 1: { allowedPiiTypes: ["dna"] } } } } }),
    { message: /allowedPiiTypes/ },
  );
  t.is(resolveDgeServerOptions({ keys: DGE_KEYS }).port, 7600);
});

test("dge server - ValidateEgress derives the classification itself and refuses a supplied one that disagrees", async (t) => {
  const server = await startDgeServer(
    { clock: systemClock, logger: silent },
    resolveDgeServerOptions({ port: 0, keys: DGE_KEYS }),
  );
  t.teardown(() => server.close());
  const c = createDgeClient(
    { clock: systemClock },
    { url: server.url, protocol: "grpc", keys: DGE_KEYS, maxSkewMs: 300_000 },
  );
  const data = "card 4111 1111 1111 1111";
  const request = { data, destination: "crm-sync", tenant: "acme", tier: Tier.TIER_1 };
  // A caller claiming the card number is public data is refused, naming the field.
  const err = await t.throwsAsync(
    c.validateEgress({ ...request, classification: { egressClass: EgressClass.D0, findings: [] } }),
  );
  t.is(ConnectError.from(err).code, Code.InvalidArgument);
  t.regex(ConnectError.from(err).rawMessage, /^classification: disagrees with the data: supplied D0 .* derived D4/);
  // Without a classification, or with the one Classify gave, the decision is made on the data.
  const bare = await c.validateEgress(request);
  t.is(bare.verdict, Verdict.DENY);
  const { classification } = await c.classify({ data });
  const honest = await c.validateEgress({ ...request, classification });
  t.deepEqual([honest.verdict, honest.reasonCode], [bare.verdict, bare.reasonCode]);
});
