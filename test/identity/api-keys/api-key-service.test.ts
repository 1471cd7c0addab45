import { randomBytes } from "node:crypto";
import test from "ava";
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import {
  ApiKeyService,
  CreateApiKeyRequestSchema,
  type CreateApiKeyResponse,
  CreateApiKeyResponseSchema,
  ListApiKeysRequestSchema,
  ListApiKeysResponseSchema,
  RevokeApiKeyRequestSchema,
  RevokeApiKeyResponseSchema,
  Role,
  RotateApiKeyRequestSchema,
  RotateApiKeyResponseSchema,
} from "../../../gen/nops/kernel/v1/api_key_pb.js";
import { createApiKeyService } from "../../../src/identity/api-keys/api-key-service.js";
import { createApiKeyStore, resolveApiKeyOptions } from "../../../src/identity/api-keys/api-key-store.js";
import { CredentialError, type Principal } from "../../../src/identity/principal.js";
import { createSilentLogger } from "../../../src/telemetry/logger.js";
import { auditRows, makeCall, openTestStore, principal } from "../../authz/fixtures.js";

const superAdmin = principal({ id: "spiffe://nops.local/nops/admin/developer", roles: ["SUPER_ADMIN"] });
const acmeAdmin = principal({ id: "jwt:alice", kind: "jwt", tenant: "acme", roles: ["ADMIN"] });
const acmeOperator = principal({ id: "jwt:bob", kind: "jwt", tenant: "acme", roles: ["OPERATOR"] });

function setup() {
  const s = openTestStore();
  const options = resolveApiKeyOptions({ pepper: randomBytes(32).toString("base64") });
  const store = createApiKeyStore({ db: s.db, clock: s.clock }, options);
  const service = createApiKeyService({ db: s.db, store, audit: s.audit, logger: createSilentLogger(), options });
  const ctx = (p: Principal | undefined, method: keyof typeof ApiKeyService.method) =>
    makeCall(ApiKeyService.method[method], {}, p ? { principal: p, correlationId: "corr-keys" } : {}).ctx;
  // Handlers may return message inits; `create` turns them into full messages for assertions.
  const createKey = async (p: Principal | undefined, init: MessageInitShape<typeof CreateApiKeyRequestSchema> = {}) =>
    create(
      CreateApiKeyResponseSchema,
      await service.createApiKey(
        create(CreateApiKeyRequestSchema, { tenant: "acme", name: "ci", role: Role.OPERATOR, ...init }),
        ctx(p, "createApiKey"),
      ),
    );
  const rotate = async (p: Principal, init: MessageInitShape<typeof RotateApiKeyRequestSchema>) =>
    create(
      RotateApiKeyResponseSchema,
      await service.rotateApiKey(create(RotateApiKeyRequestSchema, init), ctx(p, "rotateApiKey")),
    );
  const revoke = async (p: Principal, init: MessageInitShape<typeof RevokeApiKeyRequestSchema>) =>
    create(
      RevokeApiKeyResponseSchema,
      await service.revokeApiKey(create(RevokeApiKeyRequestSchema, init), ctx(p, "revokeApiKey")),
    );
  const list = async (p: Principal, init: MessageInitShape<typeof ListApiKeysRequestSchema>) =>
    create(
      ListApiKeysResponseSchema,
      await service.listApiKeys(create(ListApiKeysRequestSchema, init), ctx(p, "listApiKeys")),
    );
  return { ...s, store, createKey, rotate, revoke, list };
}

async function refusal(p: Promise<unknown>): Promise<ConnectError> {
  try {
    await p;
  } catch (e) {
    return ConnectError.from(e);
  }
  throw new Error("call was not refused");
}

test("api keys - a created key authenticates as its tenant and role", async (t) => {
  const { createKey, store } = setup();
  const res = await createKey(acmeAdmin, { agentId: "agent-7", scopes: ["registry/read/acme"] });
  t.regex(res.secret, /^nops_[0-9a-f]{24}_[A-Za-z0-9_-]{43}$/);
  t.like(store.verify(res.secret), {
    kind: "apikey",
    id: `apikey:${res.apiKey?.keyId}`,
    tenant: "acme",
    roles: ["OPERATOR"],
    scopes: ["registry/read/acme"],
    agentId: "agent-7",
  });
  t.is(res.apiKey?.createdBy, "jwt:alice");
  // One changed character of the secret is a different key.
  const last = res.secret.at(-1) === "A" ? "B" : "A";
  t.throws(() => store.verify(res.secret.slice(0, -1) + last), { instanceOf: CredentialError });
  t.throws(() => store.verify("nops_not_a_key"), { instanceOf: CredentialError });
});

test("api keys - the database never holds a key or its secret in clear", async (t) => {
  const { createKey, rotate, db } = setup();
  const first = await createKey(superAdmin);
  const rotated = await rotate(superAdmin, { tenant: "acme", keyId: first.apiKey!.keyId });
  const secrets = [first.secret, rotated.secret].flatMap((k) => [k, k.split("_").slice(2).join("_")]);
  const tables = db.prepare<[], { name: string }>("SELECT name FROM sqlite_master WHERE type = 'table'").all();
  let cells = 0;
  for (const { name } of tables) {
    for (const row of db.prepare(`SELECT * FROM "${name}"`).all() as Record<string, unknown>[]) {
      for (const value of Object.values(row)) {
        const text = Buffer.isBuffer(value)
          ? [
              value.toString("utf8"),
              value.toString("latin1"),
              value.toString("base64"),
              value.toString("base64url"),
              value.toString("hex"),
            ].join("|")
          : String(value);
        for (const s of secrets) t.false(text.includes(s), `${name} holds a secret`);
        cells++;
      }
    }
  }
  t.true(cells > 10);
});

test("api keys - after rotation both secrets work during the grace period, only the new one after", async (t) => {
  const { createKey, rotate, store, clock } = setup();
  const old = await createKey(acmeAdmin);
  const keyId = old.apiKey!.keyId;
  const next = await rotate(acmeAdmin, { tenant: "acme", keyId, gracePeriod: durationFromMs(60_000) });
  t.not(next.secret, old.secret);
  t.is(store.verify(old.secret).id, `apikey:${keyId}`);
  t.is(store.verify(next.secret).id, `apikey:${keyId}`);
  t.truthy(next.apiKey?.graceExpireTime);
  clock.advance(59_999);
  t.notThrows(() => store.verify(old.secret));
  clock.advance(1);
  t.throws(() => store.verify(old.secret), { instanceOf: CredentialError });
  t.notThrows(() => store.verify(next.secret));
});

test("api keys - rotating again ends the previous grace at once", async (t) => {
  const { createKey, rotate, store } = setup();
  const k1 = await createKey(acmeAdmin);
  const keyId = k1.apiKey!.keyId;
  const k2 = await rotate(acmeAdmin, { tenant: "acme", keyId });
  const k3 = await rotate(acmeAdmin, { tenant: "acme", keyId });
  t.throws(() => store.verify(k1.secret));
  t.notThrows(() => store.verify(k2.secret));
  t.notThrows(() => store.verify(k3.secret));
});

test("api keys - a revoked key fails at once, in grace or not", async (t) => {
  const { createKey, rotate, revoke, store } = setup();
  const k1 = await createKey(acmeAdmin);
  const keyId = k1.apiKey!.keyId;
  const k2 = await rotate(acmeAdmin, { tenant: "acme", keyId });
  const res = await revoke(acmeAdmin, { tenant: "acme", keyId, reason: "leaked" });
  t.truthy(res.apiKey?.revokeTime);
  t.throws(() => store.verify(k1.secret), { instanceOf: CredentialError });
  t.throws(() => store.verify(k2.secret), { instanceOf: CredentialError });
  const again = await refusal(rotate(acmeAdmin, { tenant: "acme", keyId }));
  t.is(again.code, Code.NotFound);
});

test("api keys - List shows no secret and stays within the tenant; paging works", async (t) => {
  const { createKey, list } = setup();
  const created: CreateApiKeyResponse[] = [];
  for (let i = 0; i < 3; i++) created.push(await createKey(superAdmin, { name: `k${i}` }));
  await createKey(superAdmin, { tenant: "globex" });
  const page1 = await list(acmeAdmin, { tenant: "acme", pageSize: 2 });
  t.is(page1.apiKeys.length, 2);
  t.not(page1.nextPageToken, "");
  const page2 = await list(acmeAdmin, { tenant: "acme", pageSize: 2, pageToken: page1.nextPageToken });
  t.is(page2.apiKeys.length, 1);
  t.is(page2.nextPageToken, "");
  const all = [...page1.apiKeys, ...page2.apiKeys];
  t.deepEqual(all.map((k) => k.keyId).sort(), created.map((c) => c.apiKey!.keyId).sort());
  const dump = JSON.stringify(all, (_k, v: unknown) => (typeof v === "bigint" ? String(v) : v));
  // The secret part is base64url and may itself contain "_": cut by the fixed-length prefix.
  for (const c of created) t.false(dump.includes(c.secret.slice(`nops_${c.apiKey!.keyId}_`.length)));
  t.true(all.every((k) => k.tenant === "acme"));
  const everyTenant = await list(superAdmin, {});
  t.is(everyTenant.apiKeys.length, 4);
});

test("api keys - non-admins, other tenants' admins and anonymous callers are refused and audited", async (t) => {
  const { createKey, list, db } = setup();
  t.is((await refusal(createKey(acmeOperator))).code, Code.PermissionDenied);
  const globexAdmin = principal({ id: "jwt:eve", tenant: "globex", roles: ["ADMIN"] });
  t.is((await refusal(createKey(globexAdmin))).code, Code.PermissionDenied);
  t.is((await refusal(createKey(undefined))).code, Code.Unauthenticated);
  t.is((await refusal(list(acmeAdmin, {}))).code, Code.PermissionDenied, "only SUPER_ADMIN lists every tenant");
  const rows = auditRows(db);
  t.is(rows.length, 4);
  t.true(rows.every((r) => r.outcome === "denied"));
  t.like(rows[0], { actor: "jwt:bob", action: "apikey.create", tenant: "acme", correlation_id: "corr-keys" });
});

test("api keys - every successful call is audited", async (t) => {
  const { createKey, rotate, revoke, list, db } = setup();
  const k = await createKey(acmeAdmin);
  const keyId = k.apiKey!.keyId;
  await rotate(acmeAdmin, { tenant: "acme", keyId });
  await list(acmeAdmin, { tenant: "acme" });
  await revoke(acmeAdmin, { tenant: "acme", keyId });
  const rows = auditRows(db);
  t.deepEqual(
    rows.map((r) => [r.action, r.outcome]),
    [
      ["apikey.create", "ok"],
      ["apikey.rotate", "ok"],
      ["apikey.list", "ok"],
      ["apikey.revoke", "ok"],
    ],
  );
  t.is(rows[0]?.resource, `apikey/${keyId}`);
  t.false(rows.some((r) => r.details.includes(k.secret)));
});

test("api keys - bad input is INVALID_ARGUMENT naming the field", async (t) => {
  const { createKey, rotate, list } = setup();
  const cases: [Promise<unknown>, string][] = [
    [createKey(superAdmin, { tenant: "Not A Tenant" }), "tenant"],
    [createKey(superAdmin, { name: "" }), "name"],
    [createKey(superAdmin, { role: Role.SUPER_ADMIN }), "role"],
    [createKey(superAdmin, { role: Role.UNSPECIFIED }), "role"],
    [createKey(superAdmin, { scopes: ["registry/write/globex"] }), "scopes[0]"],
    [createKey(superAdmin, { scopes: ["reg*"] }), "scopes[0]"],
    [createKey(superAdmin, { agentId: "has space" }), "agent_id"],
    [rotate(superAdmin, { tenant: "acme", keyId: "xyz" }), "key_id"],
    [rotate(superAdmin, { tenant: "acme", keyId: "0".repeat(24), gracePeriod: durationFromMs(-1000) }), "grace_period"],
    [list(superAdmin, { tenant: "acme", pageSize: 5000 }), "page_size"],
    [list(superAdmin, { tenant: "acme", pageToken: "!!" }), "page_token"],
  ];
  for (const [p, field] of cases) {
    const err = await refusal(p);
    t.is(err.code, Code.InvalidArgument, field);
    t.true(err.rawMessage.startsWith(`${field}:`), err.rawMessage);
  }
});

test("api keys - options: the pepper is required and sized for BLAKE2b", (t) => {
  t.throws(() => resolveApiKeyOptions({}), { message: /identity\.apiKeys\.pepper/ });
  t.throws(() => resolveApiKeyOptions({ pepper: randomBytes(16).toString("base64") }), {
    message: /identity\.apiKeys\.pepper/,
  });
  t.throws(() => resolveApiKeyOptions({ pepper: randomBytes(65).toString("base64") }), {
    message: /identity\.apiKeys\.pepper/,
  });
  t.throws(
    () => resolveApiKeyOptions({ pepper: randomBytes(32).toString("base64"), defaultGraceMs: 10, maxGraceMs: 5 }),
    { message: /defaultGraceMs/ },
  );
});

test("api keys - a different pepper does not verify the same key", async (t) => {
  const { createKey, db, clock } = setup();
  const k = await createKey(superAdmin);
  const other = createApiKeyStore({ db, clock }, resolveApiKeyOptions({ pepper: randomBytes(32).toString("base64") }));
  t.throws(() => other.verify(k.secret), { instanceOf: CredentialError });
});
