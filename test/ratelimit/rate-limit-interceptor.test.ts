import test from "ava";
import { create, fromBinary } from "@bufbuild/protobuf";
import {
  Code,
  ConnectError,
  createContextValues,
  createHandlerContext,
  type HandlerContext,
} from "@connectrpc/connect";
import { createNoopMeter } from "@opentelemetry/api";
import { Redis } from "ioredis";
import { RoutingService, InvokeRequestSchema } from "../../gen/nops/kernel/v1/routing_pb.js";
import { EventEnvelopeSchema } from "../../gen/nops/events/v1/envelope_pb.js";
import { RateLimitExceededSchema } from "../../gen/nops/events/v1/billing_events_pb.js";
import { createAuditLog, type AuditLog } from "../../src/audit/audit-log.js";
import { systemClock } from "../../src/common/clock.js";
import { kPrincipal } from "../../src/identity/principal.js";
import { ConfigError } from "../../src/common/errors.js";
import {
  createRateLimitInterceptor,
  type RateLimitInterceptorDeps,
} from "../../src/ratelimit/rate-limit-interceptor.js";
import { clientIp } from "../../src/server/interceptor.js";
import { resolveRateLimitOptions } from "../../src/ratelimit/rate-limit-options.js";
import { kPeer, type CallHandler, type CallResult } from "../../src/server/interceptor.js";
import { openDatabase, type Db } from "../../src/store/database.js";
import { MIGRATIONS } from "../../src/store/migrations/index.js";
import { migrateUp } from "../../src/store/migrator.js";
import { createOutbox } from "../../src/store/outbox.js";
import { createSqliteOutboxStore } from "../../src/store/outbox-store.js";
import { createSilentLogger } from "../../src/telemetry/logger.js";
import { startRedisServer } from "../helpers/redis-server.js";

interface Harness {
  db: Db;
  audit: AuditLog;
  deps: RateLimitInterceptorDeps;
}

function harness(redis?: Redis): Harness {
  const db = openDatabase({ path: ":memory:" });
  migrateUp(db, MIGRATIONS);
  const audit = createAuditLog(db, systemClock);
  const events = createOutbox(createSqliteOutboxStore(db), { source: "edge-test", clock: systemClock });
  return {
    db,
    audit,
    deps: { redis, events, audit, clock: systemClock, logger: createSilentLogger(), meter: createNoopMeter() },
  };
}

// The caller as authentication leaves it: a principal of `tenant` (none: anonymous).
function ctxFor(ip: string, tenant?: string): HandlerContext {
  const values = createContextValues().set(kPeer, { address: `${ip}:40000`, transport: "grpc-js", certificates: [] });
  if (tenant)
    values.set(kPrincipal, {
      kind: "apikey",
      id: `apikey:${tenant}`,
      tenant,
      roles: ["OPERATOR"],
      scopes: [],
      capabilities: [],
    });
  return createHandlerContext({
    service: RoutingService,
    method: RoutingService.method.invoke,
    protocolName: "grpc",
    requestMethod: "POST",
    url: "http://127.0.0.1/nops.kernel.v1.RoutingService/Invoke",
    contextValues: values,
  });
}

const ok: CallHandler = async () => ({ kind: "unary", output: {} });

async function call(
  handler: CallHandler,
  ip: string,
  tenant?: string,
  named: string | undefined = tenant,
): Promise<{ ctx: HandlerContext; result?: CallResult; error?: ConnectError }> {
  const ctx = ctxFor(ip, tenant);
  const input = create(InvokeRequestSchema, { tenant: named ?? "", capability: "echo" });
  try {
    return {
      ctx,
      result: await handler({ service: RoutingService, method: RoutingService.method.invoke, ctx, input }),
    };
  } catch (e) {
    return { ctx, error: ConnectError.from(e) };
  }
}

const HEADERS = ["x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset", "x-ratelimit-tier"];

test("rate limit interceptor - every response carries the X-RateLimit headers, success and error", async (t) => {
  const h = harness();
  const failing: CallHandler = async () => {
    throw new ConnectError("boom", Code.Internal);
  };
  const options = resolveRateLimitOptions({ ipLimit: 4 });
  const okChain = createRateLimitInterceptor(h.deps, options)(ok);
  const failChain = createRateLimitInterceptor(h.deps, options)(failing);
  const responses = [
    await call(okChain, "10.0.0.1", "t1"),
    await call(failChain, "10.0.0.2", "t1"),
    ...(await Promise.all(Array.from({ length: 6 }, () => call(okChain, "10.0.0.3")))),
  ];
  for (const r of responses) for (const name of HEADERS) t.truthy(r.ctx.responseHeader.get(name), `${name} missing`);
  t.is(responses[1]!.error?.code, Code.Internal);
  t.is(responses[0]!.ctx.responseHeader.get("x-ratelimit-tier"), "1");
  t.is(responses[2]!.ctx.responseHeader.get("x-ratelimit-tier"), "ip", "no tenant in the request");
  t.is(responses[0]!.ctx.responseHeader.get("x-ratelimit-limit"), "100", "an authenticated caller: its tier's limit");
  const rejected = responses.filter((r) => r.error?.code === Code.ResourceExhausted);
  t.is(rejected.length, 2);
  for (const r of rejected)
    for (const name of [...HEADERS, "retry-after"])
      t.truthy(r.error!.metadata.get(name), `${name} missing from error metadata`);
});

test("rate limit interceptor - past the limit answers RESOURCE_EXHAUSTED with Retry-After and audits it", async (t) => {
  const h = harness();
  const chain = createRateLimitInterceptor(
    h.deps,
    resolveRateLimitOptions({ ipLimit: 3, ipOverrides: { "10.9.9.9": 5 } }),
  )(ok);
  const results = [];
  for (let i = 0; i < 5; i++) results.push(await call(chain, "10.0.0.7"));
  t.deepEqual(
    results.map((r) => r.error?.code),
    [undefined, undefined, undefined, Code.ResourceExhausted, Code.ResourceExhausted],
  );
  const err = results[3]!.error!;
  const retryAfter = Number(err.metadata.get("retry-after"));
  t.true(retryAfter >= 1 && retryAfter <= 60);
  // X-RateLimit-Reset is the epoch second of the reset: Retry-After seconds from now.
  const reset = Number(err.metadata.get("x-ratelimit-reset"));
  const nowS = h.deps.clock.now() / 1000;
  t.true(reset > nowS && reset <= nowS + 61, `reset ${reset} is an epoch second within the window`);
  t.true(Math.abs(reset - nowS - retryAfter) <= 1);
  t.is(err.metadata.get("x-ratelimit-remaining"), "0");
  t.is(err.metadata.get("x-ratelimit-tier"), "ip");
  const rows = h.db.prepare("SELECT action, outcome, resource, details FROM audit_log").all() as Array<{
    action: string;
    outcome: string;
    resource: string;
    details: string;
  }>;
  t.is(rows.length, 1, "one audit row per rejected key per window");
  t.like(rows[0], { action: "ratelimit.reject", outcome: "denied", resource: "ip/10.0.0.7" });
  t.true(h.audit.verify().ok);
  // The override raises this IP's limit.
  for (let i = 0; i < 5; i++) t.is((await call(chain, "10.9.9.9")).error, undefined);
});

test("rate limit interceptor - tenants are limited by tier and isolated from each other", async (t) => {
  const h = harness();
  const chain = createRateLimitInterceptor(
    h.deps,
    resolveRateLimitOptions({
      ipLimit: 1000,
      tierLimits: { 1: 4, 2: 8 },
      tenantTiers: { gold: 2 },
      tenantWindowMs: 60_000,
    }),
  )(ok);
  const codes = async (tenant: string, n: number): Promise<Array<Code | undefined>> => {
    const out = [];
    for (let i = 0; i < n; i++) out.push((await call(chain, "10.0.0.1", tenant)).error?.code);
    return out;
  };
  t.deepEqual(await codes("acme", 5), [undefined, undefined, undefined, undefined, Code.ResourceExhausted]);
  t.deepEqual(await codes("other", 4), [undefined, undefined, undefined, undefined], "another tenant is not affected");
  const gold = await codes("gold", 9);
  t.is(gold.filter((c) => c === undefined).length, 8);
  const r = await call(chain, "10.0.0.1", "gold");
  t.is(r.error?.metadata.get("x-ratelimit-tier"), "2");
  t.is(r.error?.metadata.get("x-ratelimit-limit"), "8");
});

test("rate limit interceptor - a tenant above 95% of its quota emits billing.rate_limit_exceeded.v1 once per window", async (t) => {
  const h = harness();
  const chain = createRateLimitInterceptor(
    h.deps,
    resolveRateLimitOptions({ tierLimits: { 1: 20 }, tenantWindowMs: 60_000, ipLimit: 1000 }),
  )(ok);
  for (let i = 0; i < 19; i++) await call(chain, "10.0.0.1", "acme");
  const count = (): number =>
    (
      h.db.prepare("SELECT COUNT(*) AS n FROM outbox WHERE type = 'billing.rate_limit_exceeded.v1'").get() as {
        n: number;
      }
    ).n;
  t.is(count(), 0, "19/20 is not above 95%");
  for (let i = 0; i < 5; i++) await call(chain, "10.0.0.1", "acme");
  t.is(count(), 1);
  const row = h.db
    .prepare("SELECT envelope, tenant FROM outbox WHERE type = 'billing.rate_limit_exceeded.v1'")
    .get() as { envelope: Buffer; tenant: string };
  const event = fromBinary(RateLimitExceededSchema, fromBinary(EventEnvelopeSchema, row.envelope).payload);
  t.like(event, { tenant: "acme", tier: 1, limit: 20, used: 20, rejected: false });
});

test("rate limit interceptor - limits are shared through Redis and still enforced in memory when Redis is killed", async (t) => {
  const server = await startRedisServer();
  t.teardown(() => server.kill());
  const redis = new Redis({
    port: server.port,
    host: "127.0.0.1",
    enableOfflineQueue: false,
    maxRetriesPerRequest: 0,
    lazyConnect: true,
  });
  redis.on("error", () => undefined);
  t.teardown(() => redis.disconnect());
  await redis.connect();
  const options = resolveRateLimitOptions({ ipLimit: 6 });
  // Two kernel instances sharing one Redis see one counter.
  const a = createRateLimitInterceptor(harness(redis).deps, options)(ok);
  const b = createRateLimitInterceptor(harness(redis).deps, options)(ok);
  const codes = [];
  for (let i = 0; i < 4; i++) {
    codes.push((await call(a, "10.0.0.5")).error?.code);
    codes.push((await call(b, "10.0.0.5")).error?.code);
  }
  t.deepEqual(codes, [
    undefined,
    undefined,
    undefined,
    undefined,
    undefined,
    undefined,
    Code.ResourceExhausted,
    Code.ResourceExhausted,
  ]);
  t.is(Number(await redis.exists(`${options.keyPrefix}:ip:6:10.0.0.5`)), 1);

  await server.kill();
  const deadline = Date.now() + 10_000;
  while (redis.status === "ready" && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  t.not(redis.status, "ready");
  const after = [];
  for (let i = 0; i < 8; i++) {
    const r = await call(a, "10.0.0.6");
    for (const name of HEADERS) t.truthy(r.ctx.responseHeader.get(name));
    after.push(r.error?.code);
  }
  t.deepEqual(after, [
    undefined,
    undefined,
    undefined,
    undefined,
    undefined,
    undefined,
    Code.ResourceExhausted,
    Code.ResourceExhausted,
  ]);
});

test("rate limit options - bad input names the field", (t) => {
  t.throws(() => resolveRateLimitOptions({ tierLimits: { 2: 0 } }), {
    instanceOf: ConfigError,
    message: /rateLimit\.tierLimits\.2/,
  });
  t.throws(() => resolveRateLimitOptions({ tenantTiers: { acme: 4 } }), {
    instanceOf: ConfigError,
    message: /rateLimit\.tenantTiers\.acme/,
  });
  t.throws(() => resolveRateLimitOptions({ ipWindowMs: 1500 }), {
    instanceOf: ConfigError,
    message: /rateLimit\.ipWindowMs/,
  });
  t.deepEqual(resolveRateLimitOptions({}).tierLimits, { 1: 100, 2: 500, 3: 5000 });
  t.is(clientIp("[::1]:5000"), "::1");
  t.is(clientIp("127.0.0.1:5000"), "127.0.0.1");
});

test("rate limit interceptor - the quota is the principal's own tenant: naming another tenant spends none of its quota", async (t) => {
  const h = harness();
  const options = resolveRateLimitOptions({ ipLimit: 1000, tierLimits: { 1: 3 }, tenantWindowMs: 60_000 });
  const handler = createRateLimitInterceptor(h.deps, options)(ok);
  // acme's caller names globex in every request: acme's quota is spent, globex's is untouched.
  for (let i = 0; i < 3; i++) t.falsy((await call(handler, "10.0.0.1", "acme", "globex")).error);
  t.is((await call(handler, "10.0.0.1", "acme", "globex")).error?.code, Code.ResourceExhausted);
  t.falsy((await call(handler, "10.0.0.2", "globex")).error, "globex still has its whole quota");
  const tenants = h.db.prepare("SELECT DISTINCT tenant FROM outbox").all() as { tenant: string }[];
  t.false(
    tenants.some((r) => r.tenant === "globex"),
    "no billing event for the tenant that was only named",
  );
  // Anonymous callers are limited by address only, whatever tenant they name.
  const anonymous = await call(handler, "10.0.0.3", undefined, "globex");
  t.is(anonymous.ctx.responseHeader.get("x-ratelimit-tier"), "ip");
});

test("rate limit interceptor - authenticated callers are limited by their tenant's tier, not by their shared address", async (t) => {
  const h = harness();
  const handler = createRateLimitInterceptor(h.deps, resolveRateLimitOptions({ ipLimit: 2 }))(ok);
  // Three agents of two tenants on one host: the per-address limit (2) would starve them.
  for (let i = 0; i < 5; i++) {
    t.falsy((await call(handler, "10.1.1.1", "acme")).error);
    t.falsy((await call(handler, "10.1.1.1", "globex")).error);
  }
  t.falsy((await call(handler, "10.1.1.1")).error);
  t.falsy((await call(handler, "10.1.1.1")).error);
  t.is((await call(handler, "10.1.1.1")).error?.code, Code.ResourceExhausted, "anonymous: limited by address");
});

test("rate limit interceptor - a principal of every tenant counts against the tenant it names, else its address", async (t) => {
  const h = harness();
  const handler = createRateLimitInterceptor(h.deps, resolveRateLimitOptions({ ipLimit: 1 }))(ok);
  const admin = (named?: string) => {
    const ctx = ctxFor("10.2.2.2");
    ctx.values.set(kPrincipal, {
      kind: "spiffe",
      id: "admin",
      tenant: undefined,
      roles: ["SUPER_ADMIN"],
      scopes: [],
      capabilities: [],
    });
    const input = create(InvokeRequestSchema, { tenant: named ?? "", capability: "echo" });
    return handler({ service: RoutingService, method: RoutingService.method.invoke, ctx, input }).then(() => ctx);
  };
  t.is((await admin("acme")).responseHeader.get("x-ratelimit-tier"), "1");
  t.is((await admin()).responseHeader.get("x-ratelimit-tier"), "ip");
  const second = await admin().then(
    () => undefined,
    (e: unknown) => ConnectError.from(e),
  );
  t.is(second?.code, Code.ResourceExhausted);
});
