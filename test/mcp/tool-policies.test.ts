import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import test from "ava";
import { ConfigError } from "../../src/common/errors.js";
import { createToolPolicies, resolveToolPolicies } from "../../src/mcp/tool-policies.js";
import { resolveMcpOptions } from "../../src/mcp/mcp-options.js";
import type { Principal } from "../../src/identity/principal.js";

const acme: Principal = { kind: "jwt", id: "jwt:a", tenant: "acme", roles: ["OPERATOR"], scopes: [], capabilities: [] };
const OWN_CUSTOMERS = {
  name: "own-customers",
  tool: "crm.*",
  allow: 'args.customer.startsWith(principal.tenant + "-")',
  reason: "a tenant may only query its own customer ids",
};

test("tool policies - a tenant may only query its own customer ids; other tools are not affected", (t) => {
  const policies = createToolPolicies(resolveToolPolicies([OWN_CUSTOMERS]));
  t.deepEqual(policies.decide(acme, "crm.lookup", { customer: "acme-17" }), { allowed: true });
  t.deepEqual(policies.decide(acme, "crm.lookup", { customer: "globex-17" }), {
    allowed: false,
    policy: "own-customers",
    reason: "a tenant may only query its own customer ids",
    detail: "false",
  });
  t.deepEqual(policies.decide(acme, "summarize", { customer: "globex-17" }), { allowed: true });
});

test("tool policies - a missing or mistyped argument fails closed", (t) => {
  const policies = createToolPolicies(resolveToolPolicies([OWN_CUSTOMERS]));
  const missing = policies.decide(acme, "crm.lookup", {});
  t.false(missing.allowed);
  t.regex(missing.allowed ? "" : missing.detail, /^error: /);
  t.false(policies.decide(acme, "crm.lookup", { customer: 17 }).allowed);
  const notBool = createToolPolicies(resolveToolPolicies([{ name: "n", tool: "*", allow: "args.limit" }]));
  const d = notBool.decide(acme, "x", { limit: 3 });
  t.deepEqual(d.allowed ? "" : d.detail, "not a bool");
});

test("tool policies - nested arguments, lists and comprehensions", (t) => {
  const policies = createToolPolicies(
    resolveToolPolicies([
      { name: "ids", tool: "bulk", allow: 'args.items.all(i, i.id.startsWith(principal.tenant + "-"))' },
      {
        name: "limit",
        tool: "bulk",
        allow: "size(args.items) <= 2 && tool == 'bulk' && 'OPERATOR' in principal.roles",
      },
    ]),
  );
  t.true(policies.decide(acme, "bulk", { items: [{ id: "acme-1" }, { id: "acme-2" }] }).allowed);
  t.like(policies.decide(acme, "bulk", { items: [{ id: "acme-1" }, { id: "globex-2" }] }), { policy: "ids" });
  t.like(policies.decide(acme, "bulk", { items: [{ id: "acme-1" }, { id: "acme-2" }, { id: "acme-3" }] }), {
    policy: "limit",
  });
});

test("tool policies - validated at load with the field named", (t) => {
  const bad: [unknown, RegExp][] = [
    [[{ name: "a", tool: "x", allow: "args.a ==" }], /mcp\.policies\[0\]\.allow: not a CEL expression/],
    [[{ name: "a", tool: "x", allow: "request.tenant == 'a'" }], /mcp\.policies\[0\]\.allow: unknown variable request/],
    [[{ name: "a", tool: "x y", allow: "true" }], /mcp\.policies\[0\]\.tool must match/],
    [
      [
        { name: "a", tool: "x", allow: "true" },
        { name: "a", tool: "y", allow: "true" },
      ],
      /duplicate policy name/,
    ],
    [[{ name: "a", tool: "x", allow: "true", effect: "deny" }], /mcp\.policies\[0\]\.effect is not a policy field/],
    [[{ name: "a", tool: "x" }], /mcp\.policies\[0\]\.allow is required/],
    [{ name: "a" }, /mcp\.policies must be a list/],
  ];
  for (const [policies, message] of bad) {
    const err = t.throws(() => resolveMcpOptions({ policies }), { instanceOf: ConfigError });
    t.regex(err.message, message);
  }
});

test("cli - policy test runs cases against the configured policies", (t) => {
  const dir = mkdtempSync(join(tmpdir(), "nops-policy-"));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const config = join(dir, "kernel.yaml");
  writeFileSync(config, JSON.stringify({ dataDir: dir, mcp: { policies: [OWN_CUSTOMERS] } }));
  const cases = join(dir, "cases.yaml");
  writeFileSync(
    cases,
    [
      "- name: own customer",
      "  tool: crm.lookup",
      "  principal: { tenant: acme }",
      "  args: { customer: acme-1 }",
      "  expect: allow",
      "- name: someone else's customer",
      "  tool: crm.lookup",
      "  principal: { tenant: acme }",
      "  args: { customer: globex-1 }",
      "  expect: allow",
    ].join("\n"),
  );
  const root = new URL("../..", import.meta.url).pathname;
  const run = (args: string[]) => {
    try {
      return {
        code: 0,
        out: execFileSync(process.execPath, ["--import", "tsx", join(root, "src/cli.ts"), ...args], {
          encoding: "utf8",
          stdio: ["ignore", "pipe", "pipe"],
        }),
      };
    } catch (e) {
      const err = e as { status: number; stdout: string; stderr: string };
      return { code: err.status, out: err.stdout + err.stderr };
    }
  };
  const suite = run(["policy", "test", "--config", config, "--cases", cases]);
  t.is(suite.code, 1, suite.out);
  t.regex(suite.out, /PASS own customer: allow/);
  t.regex(suite.out, /FAIL someone else's customer: expected allow, got deny \(policy own-customers: false\)/);
  t.regex(suite.out, /1 passed, 1 failed \(1 policies\)/);

  const one = run([
    "policy",
    "test",
    "--config",
    config,
    "--tool",
    "crm.lookup",
    "--principal",
    '{"tenant":"acme"}',
    "--args",
    '{"customer":"acme-9"}',
  ]);
  t.is(one.code, 0, one.out);
  t.is(one.out.trim(), "allow");

  writeFileSync(config, JSON.stringify({ dataDir: dir, mcp: { policies: [{ ...OWN_CUSTOMERS, allow: "nope(" }] } }));
  const invalid = run(["policy", "test", "--config", config, "--cases", cases]);
  t.is(invalid.code, 2);
  t.regex(invalid.out, /mcp\.policies\[0\]\.allow: not a CEL expression/);
});
