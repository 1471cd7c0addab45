import test from "ava";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { RoutingService, InvokeRequestSchema, RouteRequestSchema } from "../../gen/nops/kernel/v1/routing_pb.js";
import { createAuthzInterceptor } from "../../src/authz/authz-interceptor.js";
import { resolveAuthzOptions } from "../../src/authz/authz-options.js";
import { createSilentLogger } from "../../src/telemetry/logger.js";
import { invokeGrantAllows, invokeGrantCovers, isInvokeGrant, mayInvoke } from "../../src/identity/invoke-grant.js";
import { auditRows, makeCall, openTestStore, principal, recordingHandler } from "./fixtures.js";

const m = RoutingService.method;

function setup() {
  const store = openTestStore();
  const { handler, calls } = recordingHandler();
  const chain = createAuthzInterceptor(
    { audit: store.audit, logger: createSilentLogger() },
    resolveAuthzOptions({}),
  )(handler);
  return { ...store, chain, calls };
}

const agent = (invoke?: string[]) =>
  principal({ id: "apikey:0123456789abcdef01234567", kind: "apikey", tenant: "acme", roles: ["AGENT"], invoke });

test("invoke grants - grammar: '*', names, and '.*' or '/*' prefixes only", (t) => {
  for (const g of ["*", "echo", "billing.*", "tools/*", "a.b-c_d/e"]) t.true(isInvokeGrant(g), g);
  for (const g of ["", "bill*", "*.x", "billing.**", "a b", ".*", "x*y"]) t.false(isInvokeGrant(g), g);
  t.true(invokeGrantAllows("billing.*", "billing.pay"));
  t.false(invokeGrantAllows("billing.*", "billing"), "a prefix grant does not cover the bare name");
  t.false(invokeGrantAllows("billing.*", "billingx.pay"));
  t.false(invokeGrantAllows("bill*", "billing"), "a malformed grant covers nothing");
  t.true(invokeGrantCovers("billing.*", "billing.refund.*"));
  t.false(invokeGrantCovers("billing.*", "*"));
  t.false(invokeGrantCovers("echo", "echo.*"));
});

test("invoke grants - only AGENT principals without a wider role are restricted", (t) => {
  t.false(mayInvoke(agent(), "echo"), "no grants: nothing");
  t.false(mayInvoke(agent([]), "echo"), "empty grants: nothing");
  t.true(mayInvoke(agent(["echo"]), "echo"));
  t.true(mayInvoke(agent(["*"]), "anything"));
  const operator = principal({ id: "op", tenant: "acme", roles: ["OPERATOR", "AGENT"] });
  t.true(mayInvoke(operator, "echo"), "operators are not restricted");
  t.true(mayInvoke(principal({ id: "root", roles: ["SUPER_ADMIN"] }), "echo"));
});

for (const method of [m.route, m.invoke, m.invokeStream]) {
  test(`invoke grants - ${method.name}: an AGENT without a grant for the capability is PERMISSION_DENIED naming it, audited`, async (t) => {
    const { chain, calls, db } = setup();
    const schema = method === m.route ? RouteRequestSchema : InvokeRequestSchema;
    const input = (capability: string) => create(schema, { tenant: "acme", capability });
    const p = agent(["echo", "billing.*"]);
    await chain(makeCall(method, input("echo"), { principal: p }));
    await chain(makeCall(method, input("billing.pay"), { principal: p }));
    t.is(calls.length, 2);
    const err = ConnectError.from(
      await t.throwsAsync(chain(makeCall(method, input("payroll.export"), { principal: p }))),
    );
    t.is(err.code, Code.PermissionDenied);
    t.regex(err.rawMessage, /no invoke grant for capability "payroll\.export"/);
    t.is(calls.length, 2, "the handler never ran");
    const denied = auditRows(db).filter((r) => r.action === "authz.deny");
    t.is(denied.length, 1);
    t.is(denied[0]?.actor, p.id);
    t.is(denied[0]?.tenant, "acme");
  });
}
