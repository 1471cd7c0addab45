import test from "ava";
import { create, toBinary } from "@bufbuild/protobuf";
import {
  Code,
  ConnectError,
  createContextValues,
  createHandlerContext,
  type HandlerContext,
} from "@connectrpc/connect";
import { Redis } from "ioredis";
import { InvokeRequestSchema, RoutingService, type InvokeRequest } from "../../../gen/nops/kernel/v1/routing_pb.js";
import { createAuditLog } from "../../../src/audit/audit-log.js";
import { createManualClock } from "../../../src/common/clock.js";
import { ConfigError } from "../../../src/common/errors.js";
import { createNonceStore } from "../../../src/identity/request-signing/nonce-store.js";
import {
  createRequestSigningInterceptor,
  kRequestSigner,
} from "../../../src/identity/request-signing/request-signing-interceptor.js";
import { resolveRequestSigningOptions } from "../../../src/identity/request-signing/request-signing-options.js";
import { signRequest } from "../../../src/identity/request-signing/request-signer.js";
import type { CallHandler } from "../../../src/server/interceptor.js";
import { openDatabase } from "../../../src/store/database.js";
import { MIGRATIONS } from "../../../src/store/migrations/index.js";
import { migrateUp } from "../../../src/store/migrator.js";
import { createSilentLogger } from "../../../src/telemetry/logger.js";
import { startRedisServer } from "../../helpers/redis-server.js";

const SECRET = Buffer.from("0123456789abcdef0123456789abcdef", "utf8");
const PATH = "/nops.kernel.v1.RoutingService/Invoke";

function setup(redis?: Redis) {
  const clock = createManualClock(Date.UTC(2026, 0, 1));
  const db = openDatabase({ path: ":memory:" });
  migrateUp(db, MIGRATIONS);
  const audit = createAuditLog(db, clock);
  const nonces = createNonceStore({ redis, clock, logger: createSilentLogger() });
  const options = resolveRequestSigningOptions({
    keys: [
      { id: "client-1", secret: SECRET.toString("base64") },
      { id: "acme-key", secret: SECRET.toString("base64"), tenant: "acme" },
    ],
  });
  let seenSigner: unknown;
  const next: CallHandler = async (call) => {
    seenSigner = call.ctx.values.get(kRequestSigner);
    return { kind: "unary", output: {} };
  };
  const chain = createRequestSigningInterceptor({ nonces, audit, clock, logger: createSilentLogger() }, options)(next);
  const reasons = (): string[] =>
    (
      db.prepare("SELECT details FROM audit_log WHERE action = 'auth.signature.reject' ORDER BY seq").all() as Array<{
        details: string;
      }>
    ).map((r) => (JSON.parse(r.details) as { reason: string }).reason);
  const send = async (
    headers: Record<string, string>,
    input: InvokeRequest,
  ): Promise<{ error?: ConnectError; ctx: HandlerContext }> => {
    const ctx = createHandlerContext({
      service: RoutingService,
      method: RoutingService.method.invoke,
      protocolName: "grpc",
      requestMethod: "POST",
      url: `http://127.0.0.1${PATH}`,
      requestHeader: headers,
      contextValues: createContextValues(),
    });
    try {
      await chain({ service: RoutingService, method: RoutingService.method.invoke, ctx, input });
      return { ctx };
    } catch (e) {
      return { ctx, error: ConnectError.from(e) };
    }
  };
  return { clock, audit, send, reasons, signer: () => seenSigner };
}

const message = (payload = "hello", tenant = "acme"): InvokeRequest =>
  create(InvokeRequestSchema, { tenant, capability: "echo", payload: new TextEncoder().encode(payload) });

function signed(
  clockMs: number,
  input: InvokeRequest,
  extra: { keyId?: string; nonce?: string; timestamp?: number } = {},
): Record<string, string> {
  return signRequest({
    keyId: extra.keyId ?? "client-1",
    secret: SECRET,
    method: "POST",
    path: PATH,
    body: toBinary(InvokeRequestSchema, input),
    headers: { "x-request-id": "r-1" },
    timestamp: extra.timestamp ?? Math.floor(clockMs / 1000),
    nonce: extra.nonce,
  });
}

test("request signing - a valid signature passes and names the signer", async (t) => {
  const s = setup();
  const r = await s.send(signed(s.clock.now(), message()), message());
  t.is(r.error, undefined);
  t.deepEqual(s.signer(), { keyId: "client-1" });
  t.deepEqual(s.reasons(), []);
});

test("request signing - replay, skew, altered body, unknown key and forgery are rejected and audited", async (t) => {
  const s = setup();
  const now = s.clock.now();
  const first = signed(now, message(), { nonce: "nonce-aaaaaaaaaaaaaaaa" });
  t.is((await s.send(first, message())).error, undefined);
  const cases: Array<[string, Record<string, string>, InvokeRequest]> = [
    ["nonce_replayed", first, message()],
    ["timestamp_skew", signed(now, message(), { timestamp: Math.floor(now / 1000) - 301 }), message()],
    ["timestamp_skew", signed(now, message(), { timestamp: Math.floor(now / 1000) + 301 }), message()],
    ["body_hash_mismatch", signed(now, message("hello")), message("hellO")],
    ["unknown_key_id", signed(now, message(), { keyId: "nobody" }), message()],
    ["bad_signature", { ...signed(now, message()), "x-request-id": "r-2" }, message()],
    ["tenant_mismatch", signed(now, message("x", "other"), { keyId: "acme-key" }), message("x", "other")],
    ["malformed", { ...signed(now, message()), "x-nops-nonce": "short" }, message()],
  ];
  for (const [reason, headers, input] of cases) {
    const r = await s.send(headers, input);
    t.is(r.error?.code, Code.Unauthenticated, reason);
    t.regex(r.error?.rawMessage ?? "", new RegExp(reason));
  }
  t.deepEqual(
    s.reasons(),
    cases.map(([reason]) => reason),
  );
  t.true(s.audit.verify().ok);
  // 5 minutes of skew is still accepted; a tenant-bound key signs for its tenant.
  t.is((await s.send(signed(now, message(), { timestamp: Math.floor(now / 1000) - 300 }), message())).error, undefined);
  t.is((await s.send(signed(now, message(), { keyId: "acme-key" }), message())).error, undefined);
});

test("request signing - a nonce is remembered across the whole accepted skew (fake clock)", async (t) => {
  const s = setup();
  const headers = signed(s.clock.now(), message(), {
    nonce: "nonce-bbbbbbbbbbbbbbbb",
    timestamp: Math.floor(s.clock.now() / 1000) + 299,
  });
  t.is((await s.send(headers, message())).error, undefined);
  s.clock.advance(9 * 60_000); // timestamp is now 4 min in the past: still inside the skew window
  t.is((await s.send(headers, message())).error?.code, Code.Unauthenticated);
  t.deepEqual(s.reasons(), ["nonce_replayed"]);
});

test("request signing - nonces are claimed in Redis and still checked in memory when Redis is killed", async (t) => {
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
  const a = setup(redis);
  const b = setup(redis);
  const headers = signed(a.clock.now(), message(), { nonce: "nonce-cccccccccccccccc" });
  t.is((await a.send(headers, message())).error, undefined);
  t.is(await redis.exists("nops:nonce:client-1:nonce-cccccccccccccccc"), 1);
  t.is(Number(await redis.pttl("nops:nonce:client-1:nonce-cccccccccccccccc")) > 300_000, true, "TTL >= 2 x skew");
  t.is(
    (await b.send(headers, message())).error?.code,
    Code.Unauthenticated,
    "another instance sees the nonce through Redis",
  );

  await server.kill();
  const deadline = Date.now() + 10_000;
  while (redis.status === "ready" && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  const fresh = signed(a.clock.now(), message(), { nonce: "nonce-dddddddddddddddd" });
  t.is((await a.send(fresh, message())).error, undefined, "Redis down: still verified");
  t.is((await a.send(fresh, message())).error?.code, Code.Unauthenticated, "and replays still caught in memory");
  t.deepEqual(a.reasons(), ["nonce_replayed"]);
});

test("request signing options - bad input names the field", (t) => {
  t.throws(() => resolveRequestSigningOptions({ keys: [{ id: "k", secret: "c2hvcnQ=" }] }), {
    instanceOf: ConfigError,
    message: /requestSigning\.keys\[0\]\.secret/,
  });
  t.throws(() => resolveRequestSigningOptions({ maxSkewMs: 300_000, nonceTtlMs: 400_000 }), {
    instanceOf: ConfigError,
    message: /requestSigning\.nonceTtlMs/,
  });
  t.is(resolveRequestSigningOptions({}).nonceTtlMs, 600_000);
});
