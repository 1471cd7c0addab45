import test from "ava";
import { Code, ConnectError } from "@connectrpc/connect";
import {
  canceled,
  checkTenant,
  deadlineExceeded,
  failedPrecondition,
  internalError,
  invalidArgument,
  notFound,
  alreadyExists,
  permissionDenied,
  resourceExhausted,
  unauthenticated,
  unavailable,
} from "../../src/common/rpc-errors.js";
import { TENANT_PATTERN } from "../../src/common/tenant.js";

test("rpc errors - each helper carries its code and the one message format", (t) => {
  const cases: [ConnectError, Code, string][] = [
    [invalidArgument("tenant", "is required"), Code.InvalidArgument, "tenant: is required"],
    [notFound("agent", "a1"), Code.NotFound, "agent a1 not found"],
    [notFound("api key"), Code.NotFound, "api key not found"],
    [alreadyExists("agent", "a1"), Code.AlreadyExists, "agent a1 already exists"],
    [
      failedPrecondition("idempotency_key was already used"),
      Code.FailedPrecondition,
      "idempotency_key was already used",
    ],
    [unauthenticated(), Code.Unauthenticated, "unauthenticated"],
    [permissionDenied(), Code.PermissionDenied, "permission denied"],
    [unavailable("storage busy"), Code.Unavailable, "storage busy"],
    [resourceExhausted("client rate limit exceeded"), Code.ResourceExhausted, "client rate limit exceeded"],
    [deadlineExceeded(), Code.DeadlineExceeded, "deadline exceeded"],
    [canceled(), Code.Canceled, "call cancelled"],
    [internalError(), Code.Internal, "internal error"],
    [internalError("c-1"), Code.Internal, "internal error (request c-1)"],
  ];
  for (const [err, code, message] of cases) {
    t.true(err instanceof ConnectError);
    t.is(err.code, code, message);
    t.is(err.rawMessage, message);
  }
});

test("rpc errors - retry-after is whole seconds, at least 1, and extra headers ride along", (t) => {
  t.is(unavailable("busy", 1).metadata.get("retry-after"), "1");
  t.is(unavailable("busy", 2001).metadata.get("retry-after"), "3");
  t.is(unavailable("busy").metadata.get("retry-after"), null);
  const limited = resourceExhausted("tenant rate limit exceeded", 30_000, { "ratelimit-remaining": "0" });
  t.is(limited.metadata.get("retry-after"), "30");
  t.is(limited.metadata.get("ratelimit-remaining"), "0");
  t.is(permissionDenied("egress blocked: pii", { "x-egress-reason": "pii" }).metadata.get("x-egress-reason"), "pii");
});

test("checkTenant - accepts tenant ids and names the field of a bad one", (t) => {
  t.notThrows(() => checkTenant("acme"));
  t.notThrows(() => checkTenant("a".repeat(63)));
  for (const bad of ["", "Acme", "-acme", "a".repeat(64), "acme.corp", "acme corp"]) {
    t.false(TENANT_PATTERN.test(bad), bad);
    const err = t.throws(() => checkTenant(bad, "filter.tenant"), { instanceOf: ConnectError });
    t.is(err.code, Code.InvalidArgument);
    t.is(err.rawMessage, "filter.tenant: must match ^[a-z0-9][a-z0-9_-]{0,62}$");
  }
});
