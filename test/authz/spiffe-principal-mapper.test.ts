import test from "ava";
import { parseSpiffeId } from "../../src/identity/spiffe/spiffe-id.js";
import {
  authorizeId,
  authorizeMemberOf,
  authorizeOneOf,
  authorizePathPrefix,
  createSpiffeMatcher,
} from "../../src/authz/spiffe-authorizer.js";
import { createSpiffePrincipalMapper, resolveSpiffePrincipalOptions } from "../../src/authz/spiffe-principal-mapper.js";

const id = (s: string) => parseSpiffeId(s);

test("spiffe authorizer - exact id", (t) => {
  const a = authorizeId("spiffe://nops.local/nops/kernel/edge-1");
  t.true(a(id("spiffe://nops.local/nops/kernel/edge-1")));
  t.false(a(id("spiffe://nops.local/nops/kernel/edge-2")));
  t.false(a(id("spiffe://other.org/nops/kernel/edge-1")));
});

test("spiffe authorizer - one of", (t) => {
  const a = authorizeOneOf(["spiffe://nops.local/a", "spiffe://nops.local/b"]);
  t.true(a(id("spiffe://nops.local/a")));
  t.true(a(id("spiffe://nops.local/b")));
  t.false(a(id("spiffe://nops.local/c")));
});

test("spiffe authorizer - member of trust domain", (t) => {
  const a = authorizeMemberOf("nops.local");
  t.true(a(id("spiffe://nops.local/anything/at/all")));
  t.false(a(id("spiffe://nops.local.evil.org/x")));
  t.false(a(id("spiffe://evil.org/nops.local")));
});

test("spiffe authorizer - path prefix matches whole segments within the trust domain", (t) => {
  const a = authorizePathPrefix("nops.local", "/nops/admin/");
  t.true(a(id("spiffe://nops.local/nops/admin")));
  t.true(a(id("spiffe://nops.local/nops/admin/developer")));
  t.false(a(id("spiffe://nops.local/nops/administrator")));
  t.false(a(id("spiffe://other.org/nops/admin/developer")));
});

test("spiffe authorizer - a match ANDs its fields and defaults to the local trust domain", (t) => {
  const m = createSpiffeMatcher({ pathPrefix: "/nops/kernel" }, "nops.local", "x");
  t.true(m(id("spiffe://nops.local/nops/kernel/edge-1")));
  t.false(m(id("spiffe://hub.example/nops/kernel/edge-1")));
  const both = createSpiffeMatcher({ trustDomain: "hub.example", pathPrefix: "/nops/kernel" }, "nops.local", "x");
  t.true(both(id("spiffe://hub.example/nops/kernel/edge-1")));
  t.throws(() => createSpiffeMatcher({ pathPrefix: "nops" }, "nops.local", "rules[3].match"), {
    message: /rules\[3\]\.match/,
  });
});

test("spiffe principals - defaults: the dev client SVID is SUPER_ADMIN for every tenant", (t) => {
  const mapper = createSpiffePrincipalMapper(resolveSpiffePrincipalOptions({}));
  const p = mapper.map("spiffe://nops.local/nops/admin/developer");
  t.deepEqual(p.roles, ["SUPER_ADMIN"]);
  t.is(p.tenant, undefined);
  t.is(p.id, "spiffe://nops.local/nops/admin/developer");
});

test("spiffe principals - defaults: an agent is AGENT in its tenant, bound to its name; an operator is OPERATOR", (t) => {
  const mapper = createSpiffePrincipalMapper(resolveSpiffePrincipalOptions({}));
  const p = mapper.map("spiffe://nops.local/nops/tenant/acme/agent/summarizer");
  t.like(p, { kind: "spiffe", tenant: "acme", roles: ["AGENT"], agentId: "summarizer" });
  t.is(mapper.map("spiffe://nops.local/nops/tenant/acme/agent/summarizer"), p, "memoised per id");
  const op = mapper.map("spiffe://nops.local/nops/tenant/acme/operator/alice");
  t.like(op, { tenant: "acme", roles: ["OPERATOR"] });
  t.is(op.agentId, undefined);
  for (const s of [
    "spiffe://nops.local/nops/tenant/acme",
    "spiffe://nops.local/nops/tenant/acme/agent",
    "spiffe://nops.local/nops/tenant/acme/agent/a/extra",
    "spiffe://nops.local/nops/tenant/acme/admin/root",
  ]) {
    t.deepEqual(mapper.map(s).roles, [], s);
  }
});

test("spiffe principals - unknown paths, foreign trust domains and bad tenants get nothing", (t) => {
  const mapper = createSpiffePrincipalMapper(resolveSpiffePrincipalOptions({}));
  for (const s of [
    "spiffe://nops.local/somewhere/else",
    "spiffe://evil.org/nops/admin/developer",
    "spiffe://nops.local/nops/tenant/Bad.Tenant/agent/a",
  ]) {
    const p = mapper.map(s);
    t.deepEqual(p.roles, [], s);
    t.is(p.tenant, undefined, s);
  }
  t.throws(() => mapper.map("https://nops.local/x"));
});

test("spiffe principals - configured rules: first match wins, fixed tenant and scopes", (t) => {
  const mapper = createSpiffePrincipalMapper(
    resolveSpiffePrincipalOptions({
      trustDomain: "corp.example",
      rules: [
        { match: { id: "spiffe://corp.example/ci/deployer" }, roles: ["ADMIN"], tenant: "acme" },
        {
          match: { oneOf: ["spiffe://corp.example/dash/a", "spiffe://corp.example/dash/b"] },
          roles: [],
          tenant: "acme",
          scopes: ["registry/read/acme"],
        },
        { match: { pathPrefix: "/ci" }, roles: ["VIEWER"], tenant: "globex" },
      ],
    }),
  );
  t.like(mapper.map("spiffe://corp.example/ci/deployer"), { tenant: "acme", roles: ["ADMIN"] });
  t.like(mapper.map("spiffe://corp.example/ci/other"), { tenant: "globex", roles: ["VIEWER"] });
  t.deepEqual(mapper.map("spiffe://corp.example/dash/b").scopes, ["registry/read/acme"]);
});

test("spiffe principals - options: bad input names the field", (t) => {
  t.throws(() => resolveSpiffePrincipalOptions({ trustDomain: "Bad Domain" }), {
    message: /identity\.spiffe\.trustDomain/,
  });
  t.throws(() => resolveSpiffePrincipalOptions({ rules: [{ match: {}, roles: [] }] }), {
    message: /identity\.spiffe\.rules\[0\]\.match/,
  });
  t.throws(() => resolveSpiffePrincipalOptions({ rules: [{ match: { pathPrefix: "/x" }, roles: ["ROOT"] }] }), {
    message: /rules\[0\]\.roles\[0\]/,
  });
  t.throws(
    () => resolveSpiffePrincipalOptions({ rules: [{ match: { pathPrefix: "/x" }, roles: [], tenant: "A B" }] }),
    { message: /rules\[0\]\.tenant/ },
  );
  t.throws(() => resolveSpiffePrincipalOptions({ rules: [{ match: { id: "not-spiffe" }, roles: [] }] }), {
    message: /rules\[0\]\.match/,
  });
});
