import test from "ava";
import { create } from "@bufbuild/protobuf";
import { systemClock } from "../../src/common/clock.js";
import { ConfigError } from "../../src/common/errors.js";
import { CommandRejectedError } from "../../src/events/kernel-commands.js";
import {
  createHubDgePolicies,
  dgePolicyOfCommand,
  loadHubDgePolicies,
  withHubDgePolicies,
} from "../../src/kernel/hub-dge-policies.js";
import { dgePolicyCommandOfFlags } from "../../src/kernel/hub-command.js";
import { createHubCommandHandler } from "../../src/kernel/hub-commands.js";
import { resolveKernelOptions } from "../../src/kernel/kernel-options.js";
import { createPeerRegistry } from "../../src/federation/peer-registry.js";
import { createApiKeyStore, resolveApiKeyOptions } from "../../src/identity/api-keys/api-key-store.js";
import { resolveDgePoliciesOptions, type DgePoliciesOptions } from "../../packages/reference-dge/src/index.js";
import { EgressClass, PiiType, Tier } from "../../gen/nops/dge/v1/dge_pb.js";
import { KernelCommandSchema, SetDgePolicyCommandSchema } from "../../gen/nops/events/v1/kernel_command_pb.js";
import { makeStore, silent } from "../fixtures/dge-helpers.js";

const cmd = (value: Record<string, unknown>) => create(SetDgePolicyCommandSchema, value);
const rejected = (value: Record<string, unknown>): string => {
  try {
    dgePolicyOfCommand(cmd(value));
  } catch (err) {
    if (err instanceof CommandRejectedError) return err.message;
    throw err;
  }
  return "accepted";
};

test("hub dge policies - a command is validated like config and names the bad field", (t) => {
  const good = { tenant: "acme", tier: Tier.TIER_2, maxEgressClass: EgressClass.D2, ttlSeconds: 60 };
  t.deepEqual(dgePolicyOfCommand(cmd({ ...good, allowedPiiTypes: [PiiType.EMAIL], allowedDestinations: ["crm*"] })), {
    tenant: "acme",
    tier: "2",
    spec: { maxEgressClass: "D2", allowedPiiTypes: ["email"], allowedDestinations: ["crm*"], ttlSeconds: 60 },
  });
  t.deepEqual(dgePolicyOfCommand(cmd({ tier: Tier.TIER_1, clear: true })), { clear: true, tenant: "", tier: "1" });
  t.is(rejected({ ...good, tier: Tier.TIER_UNSPECIFIED }), "set_dge_policy.tier: must be TIER_1, TIER_2 or TIER_3");
  t.is(rejected({ ...good, tier: Tier.TIER_AIR_GAPPED }), "set_dge_policy.tier: must be TIER_1, TIER_2 or TIER_3");
  t.is(rejected({ ...good, tenant: "Not A Tenant" }), "set_dge_policy.tenant: is not a tenant id");
  t.is(
    rejected({ ...good, maxEgressClass: EgressClass.UNSPECIFIED }),
    "set_dge_policy.max_egress_class: must be one of D0, D1, D2, D3, D4",
  );
  t.regex(rejected({ ...good, ttlSeconds: 0 }), /^set_dge_policy\.ttlSeconds /);
  t.regex(rejected({ ...good, ttlSeconds: 86_401 }), /^set_dge_policy\.ttlSeconds /);
  t.regex(
    rejected({ ...good, allowedPiiTypes: [PiiType.UNSPECIFIED] }),
    /^set_dge_policy\.allowedPiiTypes: unknown type/,
  );
  t.is(
    rejected({ tier: Tier.TIER_1, clear: true, ttlSeconds: 60 }),
    "set_dge_policy.clear: the policy fields must be empty when clearing",
  );
});

test("hub dge policies - precedence: hub tenant, config tenant, hub tier default, config tier default", (t) => {
  const config = resolveDgePoliciesOptions({
    tiers: { 1: { maxEgressClass: "D2" } },
    tenants: { acme: { 1: { maxEgressClass: "D3" } } },
  });
  const spec = (maxEgressClass: "D0" | "D1") => ({
    maxEgressClass,
    allowedPiiTypes: [],
    allowedDestinations: [],
    ttlSeconds: 30,
  });
  const merged = withHubDgePolicies(config, [
    { tenant: "", tier: "1", spec: spec("D1") },
    { tenant: "globex", tier: "1", spec: spec("D0") },
  ]);
  t.is(merged.tiers["1"].maxEgressClass, "D1", "the hub's tier default replaces the config file's");
  t.is(merged.tenants.acme?.["1"]?.maxEgressClass, "D3", "a config tenant policy beats any tier default");
  t.is(merged.tenants.globex?.["1"]?.maxEgressClass, "D0");
  t.is(config.tiers["1"].maxEgressClass, "D2", "the config file's policies are not changed");
  const hubOverConfig = withHubDgePolicies(config, [{ tenant: "acme", tier: "1", spec: spec("D0") }]);
  t.is(hubOverConfig.tenants.acme?.["1"]?.maxEgressClass, "D0", "the hub's tenant policy beats the config file's");
});

test("hub dge policies - set and clear persist, are audited, reach the DGE after commit and drop the guard's copies", (t) => {
  const store = makeStore();
  const config = resolveDgePoliciesOptions({});
  const given: DgePoliciesOptions[] = [];
  const invalidated: string[] = [];
  const policies = createHubDgePolicies(
    {
      db: store.db,
      audit: store.audit,
      clock: systemClock,
      logger: silent,
      dge: { setPolicies: (p) => given.push(p) },
      guard: { invalidate: (tenant) => (invalidated.push(tenant), Promise.resolve()) },
    },
    config,
  );
  const ctx = { commandId: "c1", actor: "hub:ops" };
  const committed = store.db.transaction(() =>
    policies.apply(cmd({ tier: Tier.TIER_3, maxEgressClass: EgressClass.D0, ttlSeconds: 10 }), ctx),
  )();
  t.is(given.length, 0, "nothing reaches the DGE inside the transaction");
  committed();
  t.is(given[0]?.tiers["3"].maxEgressClass, "D0");
  t.deepEqual(invalidated, [""], "a tier default drops every tenant's copies");
  t.is(loadHubDgePolicies(store.db, config).tiers["3"].maxEgressClass, "D0", "persisted for the next start");

  policies.apply(cmd({ tier: Tier.TIER_3, clear: true }), { commandId: "c2", actor: "hub:ops" })();
  t.is(given[1]?.tiers["3"].maxEgressClass, "D1", "the config file's default is back");
  t.throws(() => policies.apply(cmd({ tier: Tier.TIER_3, clear: true }), ctx), {
    instanceOf: CommandRejectedError,
    message: "set_dge_policy.clear: the hub set no policy for tier 3 default",
  });
  const audit = store.db
    .prepare("SELECT action, actor, tenant, resource FROM audit_log WHERE action LIKE 'dge.policy.%' ORDER BY seq")
    .all();
  t.deepEqual(audit, [
    { action: "dge.policy.set", actor: "hub:ops", tenant: "", resource: "dge-policy/*/3" },
    { action: "dge.policy.clear", actor: "hub:ops", tenant: "", resource: "dge-policy/*/3" },
  ]);
});

test("hub dge policies - an edge with an external DGE refuses the command", (t) => {
  const store = makeStore();
  const handler = createHubCommandHandler({
    peers: createPeerRegistry({ db: store.db, audit: store.audit, clock: systemClock, logger: silent }),
    apiKeys: createApiKeyStore(
      { db: store.db, clock: systemClock },
      resolveApiKeyOptions({ pepper: Buffer.alloc(32, 1).toString("base64") }),
    ),
    audit: store.audit,
  });
  const command = create(KernelCommandSchema, {
    version: 1,
    id: "x",
    targetEdge: "edge1",
    issuedBy: "ops",
    command: { case: "setDgePolicy", value: { tier: Tier.TIER_1, maxEgressClass: EgressClass.D1, ttlSeconds: 60 } },
  });
  t.throws(() => handler.apply(command), {
    instanceOf: CommandRejectedError,
    message: "set_dge_policy: this edge's DGE is external; its policies are managed there",
  });
});

test("nops-kernel hub set-dge-policy - flags make the command; a bad flag is named", (t) => {
  const flags = (...kv: string[]) =>
    new Map(Array.from({ length: kv.length / 2 }, (_, i) => [kv[2 * i]!, kv[2 * i + 1]!]));
  const base = ["--edge", "edge1", "--issued-by", "ops@hub", "--tier", "2"];
  const c = dgePolicyCommandOfFlags(
    "set-dge-policy",
    flags(...base, "--tenant", "acme", "--max-class", "D3", "--allow-pii", "email,us_ssn", "--destinations", "a,b*"),
  );
  t.is(c.targetEdge, "edge1");
  t.is(c.issuedBy, "ops@hub");
  t.like(c.command.value, {
    tenant: "acme",
    tier: Tier.TIER_2,
    clear: false,
    maxEgressClass: EgressClass.D3,
    allowedPiiTypes: [PiiType.EMAIL, PiiType.US_SSN],
    allowedDestinations: ["a", "b*"],
    ttlSeconds: 300,
  });
  t.like(dgePolicyCommandOfFlags("clear-dge-policy", flags(...base)).command.value, { tenant: "", clear: true });
  const fails = (sub: string, ...kv: string[]) =>
    t.throws(() => dgePolicyCommandOfFlags(sub, flags(...kv)), { instanceOf: ConfigError })?.message;
  t.is(fails("set-dge-policy", ...base), "hub set-dge-policy needs --max-class");
  t.is(
    fails("set-dge-policy", "--edge", "e", "--issued-by", "o", "--tier", "4", "--max-class", "D1"),
    "--tier must be 1, 2 or 3 (got 4)",
  );
  t.regex(fails("set-dge-policy", ...base, "--max-class", "D9"), /^--max-class must be one of D0, D1/);
  t.regex(
    fails("set-dge-policy", ...base, "--max-class", "D1", "--allow-pii", "email,shoe_size"),
    /^--allow-pii: unknown type shoe_size/,
  );
  t.is(
    fails("set-dge-policy", ...base, "--max-class", "D1", "--ttl", "0"),
    "--ttl must be whole seconds from 1 to 86400 (got 0)",
  );
  t.is(
    fails("set-dge-policy", ...base, "--max-class", "D1", "--tenant", "No Tenant"),
    "--tenant: No Tenant is not a tenant id",
  );
  t.is(fails("clear-dge-policy", ...base, "--max-class", "D1"), "hub clear-dge-policy takes no --max-class");
});

test("config - dge.policies feed the embedded DGE; with dge.url set they are refused", (t) => {
  const o = resolveKernelOptions({ dge: { policies: { tiers: { 2: { maxEgressClass: "D2" } } } } });
  t.is(o.dge.policies.tiers["2"].maxEgressClass, "D2");
  t.is(o.dge.policies.tiers["1"].maxEgressClass, "D1");
  t.throws(() => resolveKernelOptions({ dge: { policies: { tiers: { 2: { maxEgressClass: "D7" } } } } }), {
    message: /^dge\.policies\.tiers\.2\.maxEgressClass/,
  });
  t.throws(
    () =>
      resolveKernelOptions({
        dge: { url: "https://dge.example", keys: { k: "x".repeat(32) }, policies: {} },
      }),
    { message: /^dge\.policies applies to the embedded DGE only/ },
  );
});
