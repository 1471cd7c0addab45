import test from "ava";
import { grantAllows, parseRequiredScope, parseScopeGrant } from "../../src/identity/scope.js";

const write = parseRequiredScope("registry/write")!;

test("scope - three parts, two parts (tenant *) and wildcards parse; malformed scopes do not", (t) => {
  t.deepEqual(parseScopeGrant("registry/*/acme"), { service: "registry", operation: "*", tenant: "acme" });
  t.deepEqual(parseScopeGrant("registry/write"), { service: "registry", operation: "write", tenant: "*" });
  for (const bad of [
    "registry",
    "registry/write/acme/x",
    "reg*/write",
    "registry//acme",
    "Registry/write",
    "registry/write/ACME",
    "",
  ]) {
    t.is(parseScopeGrant(bad), undefined, bad);
  }
  t.is(parseRequiredScope("registry/*"), undefined);
  t.is(parseRequiredScope("registry/write/acme"), undefined);
});

test("scope - a grant covers the required scope by part, with * matching any value", (t) => {
  const allows = (g: string, tenant: string | undefined) => grantAllows(parseScopeGrant(g)!, write, tenant);
  t.true(allows("registry/*/acme", "acme"));
  t.true(allows("registry/write/*", "acme"));
  t.true(allows("*/*/*", "acme"));
  t.false(allows("registry/*/acme", "globex"));
  t.false(allows("registry/read/*", "acme"));
  t.false(allows("events/*/*", "acme"));
});

test("scope - a request that targets no tenant needs * in the tenant part", (t) => {
  t.true(grantAllows(parseScopeGrant("registry/write/*")!, write, undefined));
  t.false(grantAllows(parseScopeGrant("registry/write/acme")!, write, undefined));
});
