import test from "ava";
import { create, type DescMessage, type DescMethod } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { AgentRegistryService } from "../../gen/nops/kernel/v1/agent_registry_pb.js";
import { Health as HealthService } from "../../gen/grpc/health/v1/health_pb.js";
import { createAuthzInterceptor } from "../../src/authz/authz-interceptor.js";
import { resolveAuthzOptions } from "../../src/authz/authz-options.js";
import { createSilentLogger } from "../../src/telemetry/logger.js";
import { DEFAULT_DENIAL_AUDIT_WINDOW_MS } from "../../src/audit/audit-denial.js";
import type { Principal } from "../../src/identity/principal.js";
import { auditRows, makeCall, openTestStore, principal, recordingHandler } from "./fixtures.js";

const registryMethods = AgentRegistryService.methods;

// Builds a request of `schema` that targets `tenant`, wherever the type keeps its tenant field.
function requestFor(schema: DescMessage, tenant: string): unknown {
  const msg = create(schema) as Record<string, unknown>;
  const top = schema.fields.find((f) => f.name === "tenant");
  if (top) {
    msg[top.localName] = tenant;
    return msg;
  }
  for (const f of schema.fields) {
    if (f.fieldKind === "message" && f.message.fields.some((g) => g.name === "tenant")) {
      msg[f.localName] = create(f.message, { tenant });
      return msg;
    }
  }
  throw new Error(`${schema.typeName} has no tenant field`);
}

function setup(input: unknown = {}) {
  const store = openTestStore();
  const { handler, calls } = recordingHandler();
  const chain = createAuthzInterceptor(
    { audit: store.audit, logger: createSilentLogger() },
    resolveAuthzOptions(input),
  )(handler);
  return { ...store, chain, calls };
}

async function refusal(p: Promise<unknown>): Promise<ConnectError> {
  try {
    await p;
  } catch (e) {
    return ConnectError.from(e);
  }
  throw new Error("call was not refused");
}

const acmeAgent = principal({
  id: "spiffe://nops.local/nops/tenant/acme/agent/a1",
  tenant: "acme",
  roles: ["OPERATOR"],
});

test("authz - the tenant isolation test covers every AgentRegistryService method", (t) => {
  t.deepEqual(registryMethods.map((m) => m.name).sort(), [
    "DeregisterAgent",
    "GetAgent",
    "Heartbeat",
    "ListAgents",
    "RegisterAgent",
    "UpdateAgent",
    "WatchAgents",
  ]);
});

for (const method of registryMethods) {
  test(`authz - ${method.name}: tenant acme's principal is allowed for acme and refused for globex`, async (t) => {
    const { db, chain, calls } = setup();
    const own = await chain(makeCall(method, requestFor(method.input, "acme"), { principal: acmeAgent }));
    t.is(own.kind, method.methodKind === "server_streaming" ? "stream" : "unary");
    t.is(calls.length, 1);

    const err = await refusal(
      chain(
        makeCall(method, requestFor(method.input, "globex"), {
          principal: acmeAgent,
          correlationId: `c-${method.name}`,
        }),
      ),
    );
    t.is(err.code, Code.PermissionDenied);
    t.false(err.rawMessage.includes("globex"), "the client is not told why");
    t.is(calls.length, 1, "the handler never saw the foreign request");
    const rows = auditRows(db);
    t.is(rows.length, 1);
    t.like(rows[0], {
      actor: acmeAgent.id,
      action: "authz.deny",
      outcome: "denied",
      correlation_id: `c-${method.name}`,
      tenant: "globex",
    });
  });
}

test("authz - a flood of the same refusal writes one audit row per window, and the next row counts the rest", async (t) => {
  const store = openTestStore();
  const clock = store.clock;
  const { handler } = recordingHandler();
  const chain = createAuthzInterceptor(
    { audit: store.audit, logger: createSilentLogger(), clock },
    resolveAuthzOptions({}),
  )(handler);
  const method = AgentRegistryService.method.getAgent;
  const foreign = () => refusal(chain(makeCall(method, requestFor(method.input, "globex"), { principal: acmeAgent })));
  for (let i = 0; i < 50; i++) t.is((await foreign()).code, Code.PermissionDenied, "every call is still refused");
  t.is(auditRows(store.db).length, 1);
  // A different refusal (another tenant) is its own row.
  await refusal(chain(makeCall(method, requestFor(method.input, "initech"), { principal: acmeAgent })));
  t.is(auditRows(store.db).length, 2);

  clock.advance(DEFAULT_DENIAL_AUDIT_WINDOW_MS);
  await foreign();
  const rows = auditRows(store.db);
  t.is(rows.length, 3);
  t.like(rows[2], { action: "authz.deny", tenant: "globex" });
  t.is((JSON.parse(rows[2]!.details) as { repeatsNotRecorded?: number }).repeatsNotRecorded, 49);
  t.true(store.audit.verify().ok);
});

test("authz - SUPER_ADMIN without a tenant reaches every tenant", async (t) => {
  const { chain, calls } = setup();
  const admin = principal({ id: "spiffe://nops.local/nops/admin/developer", roles: ["SUPER_ADMIN"] });
  for (const method of registryMethods) {
    for (const tenant of ["acme", "globex"])
      await chain(makeCall(method, requestFor(method.input, tenant), { principal: admin }));
  }
  t.is(calls.length, registryMethods.length * 2);
});

test("authz - a principal with no tenant that is not SUPER_ADMIN reaches no tenant", async (t) => {
  const { chain } = setup();
  const admin = principal({ id: "jwt:x", roles: ["ADMIN"] });
  const m = AgentRegistryService.method.getAgent;
  t.is(
    (await refusal(chain(makeCall(m, requestFor(m.input, "acme"), { principal: admin })))).code,
    Code.PermissionDenied,
  );
});

test("authz - a tenant-bound principal must name its tenant", async (t) => {
  const { chain, db } = setup();
  const m = AgentRegistryService.method.listAgents;
  t.is((await refusal(chain(makeCall(m, create(m.input), { principal: acmeAgent })))).code, Code.PermissionDenied);
  const u = AgentRegistryService.method.updateAgent;
  t.is((await refusal(chain(makeCall(u, create(u.input), { principal: acmeAgent })))).code, Code.PermissionDenied);
  const details = JSON.parse(auditRows(db)[0]?.details ?? "{}") as { reason?: string };
  t.regex(details.reason ?? "", /no tenant/);
});

test("authz - scopes: registry/*/acme and registry/write/* both allow RegisterAgent for acme", async (t) => {
  const { chain, calls } = setup();
  const m = AgentRegistryService.method.registerAgent;
  for (const scope of ["registry/*/acme", "registry/write/*", "registry/write", "*/*/*"]) {
    const p = principal({ id: `jwt:${scope}`, kind: "jwt", tenant: "acme", scopes: [scope] });
    await chain(makeCall(m, requestFor(m.input, "acme"), { principal: p }));
  }
  t.is(calls.length, 4);
});

test("authz - scopes: a grant for another operation, service or tenant does not allow the call", async (t) => {
  const { chain, db } = setup();
  const m = AgentRegistryService.method.registerAgent;
  for (const scope of ["registry/read/*", "events/write/*", "registry/write/globex", "registry/wr*/*", "registry"]) {
    const p = principal({ id: `jwt:${scope}`, kind: "jwt", tenant: "acme", scopes: [scope] });
    t.is(
      (await refusal(chain(makeCall(m, requestFor(m.input, "acme"), { principal: p })))).code,
      Code.PermissionDenied,
      scope,
    );
  }
  t.is(auditRows(db).length, 5);
});

test("authz - roles: VIEWER reads but does not write, OPERATOR does both", async (t) => {
  const { chain } = setup();
  const viewer = principal({ id: "apikey:v", kind: "apikey", tenant: "acme", roles: ["VIEWER"] });
  const get = AgentRegistryService.method.getAgent;
  const hb = AgentRegistryService.method.heartbeat;
  await t.notThrowsAsync(chain(makeCall(get, requestFor(get.input, "acme"), { principal: viewer })));
  t.is(
    (await refusal(chain(makeCall(hb, requestFor(hb.input, "acme"), { principal: viewer })))).code,
    Code.PermissionDenied,
  );
  await t.notThrowsAsync(chain(makeCall(hb, requestFor(hb.input, "acme"), { principal: acmeAgent })));
});

test("authz - a valid identity without roles or scopes is refused and audited", async (t) => {
  const { chain, db } = setup();
  const stranger = principal({ id: "spiffe://nops.local/other/thing" });
  const m = AgentRegistryService.method.getAgent;
  t.is(
    (await refusal(chain(makeCall(m, requestFor(m.input, "acme"), { principal: stranger })))).code,
    Code.PermissionDenied,
  );
  t.like(auditRows(db)[0], { actor: stranger.id, action: "authz.deny", outcome: "denied" });
});

test("authz - a method with no scope mapping is SUPER_ADMIN only", async (t) => {
  const { chain, calls } = setup({ publicMethods: [] });
  const m = HealthService.method.check;
  const admin = principal({ id: "a", tenant: "acme", roles: ["ADMIN"] });
  t.is((await refusal(chain(makeCall(m, create(m.input), { principal: admin })))).code, Code.PermissionDenied);
  await chain(makeCall(m, create(m.input), { principal: principal({ id: "s", roles: ["SUPER_ADMIN"] }) }));
  t.is(calls.length, 1);
});

test("authz - public methods need no principal; others without one are UNAUTHENTICATED and audited", async (t) => {
  const { chain, calls, db } = setup();
  const h = HealthService.method.check;
  await chain(makeCall(h, create(h.input)));
  t.is(calls.length, 1);
  const m = AgentRegistryService.method.getAgent;
  t.is((await refusal(chain(makeCall(m, requestFor(m.input, "acme"))))).code, Code.Unauthenticated);
  t.like(auditRows(db)[0], { actor: "anonymous", action: "authn.deny", outcome: "denied" });
});

test("authz - allowAnonymous lets calls without a principal through", async (t) => {
  const { chain, calls } = setup({ allowAnonymous: true });
  const m = AgentRegistryService.method.getAgent;
  await chain(makeCall(m, requestFor(m.input, "acme")));
  t.is(calls.length, 1);
});

test("authz - attribute rules: deny by role and tenant wins over scopes; allow by capability grants a method", async (t) => {
  const { chain, calls } = setup({
    rules: [
      {
        effect: "deny",
        methods: ["/nops.kernel.v1.AgentRegistryService/DeregisterAgent"],
        roles: ["OPERATOR"],
        tenants: ["acme"],
      },
      { effect: "allow", methods: ["/nops.kernel.v1.AgentRegistryService/*"], capabilities: ["registry.maintainer"] },
    ],
  });
  const dereg = AgentRegistryService.method.deregisterAgent;
  const register = AgentRegistryService.method.registerAgent;
  t.is(
    (await refusal(chain(makeCall(dereg, requestFor(dereg.input, "acme"), { principal: acmeAgent })))).code,
    Code.PermissionDenied,
  );
  const globexAgent: Principal = { ...acmeAgent, tenant: "globex" };
  await chain(makeCall(dereg, requestFor(dereg.input, "globex"), { principal: globexAgent }));
  const maintainer = principal({ id: "jwt:m", tenant: "acme", capabilities: ["registry.maintainer"] });
  await chain(makeCall(register, requestFor(register.input, "acme"), { principal: maintainer }));
  // An allow rule never crosses tenants.
  t.is(
    (await refusal(chain(makeCall(register, requestFor(register.input, "globex"), { principal: maintainer })))).code,
    Code.PermissionDenied,
  );
  t.is(calls.length, 2);
});

test("authz - options: bad input names the field", (t) => {
  t.throws(() => resolveAuthzOptions({ methodScopes: { "/a.B/C": "registry" } }), {
    message: /authz\.methodScopes\["\/a\.B\/C"\]/,
  });
  t.throws(() => resolveAuthzOptions({ roleScopes: { VIEWER: ["registry/re*d"] } }), {
    message: /authz\.roleScopes\.VIEWER\[0\]/,
  });
  t.throws(() => resolveAuthzOptions({ roleScopes: { ROOT: [] } }), { message: /authz\.roleScopes\.ROOT/ });
  t.throws(() => resolveAuthzOptions({ rules: [{ effect: "maybe", methods: ["*"] }] }), {
    message: /authz\.rules\[0\]\.effect/,
  });
  t.throws(() => resolveAuthzOptions({ rules: [{ effect: "deny", methods: ["nope"] }] }), {
    message: /authz\.rules\[0\]\.methods\[0\]/,
  });
  t.throws(() => resolveAuthzOptions({ allowAnonymous: "yes" }), { message: /authz\.allowAnonymous/ });
  // A misspelt key fails instead of being ignored: "role" would have made this allow rule apply to every caller.
  t.throws(() => resolveAuthzOptions({ rules: [{ effect: "allow", methods: ["*"], role: ["ADMIN"] }] }), {
    message: /authz\.rules\[0\]\.role is not a known option/,
  });
  t.throws(() => resolveAuthzOptions({ rule: [] }), { message: /authz\.rule is not a known option/ });
});

// Sanity: the helper really targets the tenant the tests think it does.
test("authz - test helper puts the tenant where each request type keeps it", (t) => {
  const u = requestFor(AgentRegistryService.method.updateAgent.input, "acme") as { agent?: { tenant: string } };
  t.is(u.agent?.tenant, "acme");
  const methods: DescMethod[] = [...registryMethods];
  t.true(
    methods.every((m) =>
      JSON.stringify(requestFor(m.input, "zz-tenant"), (_k, v: unknown) =>
        typeof v === "bigint" ? String(v) : v,
      ).includes("zz-tenant"),
    ),
  );
});
