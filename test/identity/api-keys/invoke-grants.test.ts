import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import test from "ava";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import {
  ApiKeyService,
  CreateApiKeyRequestSchema,
  CreateApiKeyResponseSchema,
  ListApiKeysRequestSchema,
  ListApiKeysResponseSchema,
  Role,
  RotateApiKeyRequestSchema,
  RotateApiKeyResponseSchema,
} from "../../../gen/nops/kernel/v1/api_key_pb.js";
import { createApiKeyService } from "../../../src/identity/api-keys/api-key-service.js";
import { createApiKeyStore, resolveApiKeyOptions } from "../../../src/identity/api-keys/api-key-store.js";
import { createAuditLog } from "../../../src/audit/audit-log.js";
import { createManualClock } from "../../../src/common/clock.js";
import { openDatabase } from "../../../src/store/database.js";
import { migrateDown, migrateUp } from "../../../src/store/migrator.js";
import { MIGRATIONS } from "../../../src/store/migrations/index.js";
import { createSilentLogger } from "../../../src/telemetry/logger.js";
import { makeCall, principal } from "../../authz/fixtures.js";

const admin = principal({ id: "spiffe://nops.local/nops/admin/developer", roles: ["SUPER_ADMIN"] });

function open(path: string, pepper: string) {
  const db = openDatabase({ path });
  migrateUp(db, MIGRATIONS);
  const clock = createManualClock();
  const options = resolveApiKeyOptions({ pepper });
  const store = createApiKeyStore({ db, clock }, options);
  const service = createApiKeyService({
    db,
    store,
    audit: createAuditLog(db, clock),
    logger: createSilentLogger(),
    options,
  });
  const ctx = (method: keyof typeof ApiKeyService.method) =>
    makeCall(ApiKeyService.method[method], {}, { principal: admin }).ctx;
  return { db, store, service, ctx };
}

test("api key invoke grants - stored with the key, listed, kept by rotation and a restart", async (t) => {
  const dir = mkdtempSync(join(tmpdir(), "nops-grants-"));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const pepper = randomBytes(32).toString("base64");
  const path = join(dir, "kernel.db");
  let k = open(path, pepper);
  const created = create(
    CreateApiKeyResponseSchema,
    await k.service.createApiKey(
      create(CreateApiKeyRequestSchema, {
        tenant: "acme",
        agentId: "a1",
        name: "a1",
        role: Role.AGENT,
        invokeGrants: ["echo", "billing.*", "echo"],
      }),
      k.ctx("createApiKey"),
    ),
  );
  t.deepEqual(created.apiKey?.invokeGrants, ["echo", "billing.*"]);
  t.deepEqual(k.store.verify(created.secret).invoke, ["echo", "billing.*"]);
  const rotated = create(
    RotateApiKeyResponseSchema,
    await k.service.rotateApiKey(
      create(RotateApiKeyRequestSchema, { tenant: "acme", keyId: created.apiKey!.keyId }),
      k.ctx("rotateApiKey"),
    ),
  );
  t.deepEqual(rotated.apiKey?.invokeGrants, ["echo", "billing.*"]);
  t.deepEqual(k.store.verify(rotated.secret).invoke, ["echo", "billing.*"], "the new secret carries the grants");
  k.db.close();

  k = open(path, pepper);
  t.deepEqual(k.store.verify(rotated.secret).invoke, ["echo", "billing.*"], "grants survive a restart");
  const listed = create(
    ListApiKeysResponseSchema,
    await k.service.listApiKeys(create(ListApiKeysRequestSchema, { tenant: "acme" }), k.ctx("listApiKeys")),
  );
  t.deepEqual(listed.apiKeys[0]?.invokeGrants, ["echo", "billing.*"]);
  k.db.close();
});

test("api key invoke grants - a malformed grant is INVALID_ARGUMENT naming it; none means none", async (t) => {
  const k = open(":memory:", randomBytes(32).toString("base64"));
  const err = ConnectError.from(
    await t.throwsAsync(async () =>
      k.service.createApiKey(
        create(CreateApiKeyRequestSchema, {
          tenant: "acme",
          name: "x",
          role: Role.AGENT,
          invokeGrants: ["ok", "bill*"],
        }),
        k.ctx("createApiKey"),
      ),
    ),
  );
  t.is(err.code, Code.InvalidArgument);
  t.regex(err.rawMessage, /invoke_grants\[1\]/);
  const none = create(
    CreateApiKeyResponseSchema,
    await k.service.createApiKey(
      create(CreateApiKeyRequestSchema, { tenant: "acme", name: "x", role: Role.AGENT }),
      k.ctx("createApiKey"),
    ),
  );
  t.deepEqual(k.store.verify(none.secret).invoke, []);
});

test("api key invoke grants - a key made before grants existed keeps its reach ('*') across down and up", (t) => {
  const db = openDatabase({ path: ":memory:" });
  migrateUp(db, MIGRATIONS);
  migrateDown(db, MIGRATIONS, 1);
  // Written by the pre-grants schema (no api_key_grants table): insert the rows by hand.
  db.prepare(
    `INSERT INTO api_keys (key_id, tenant, agent_id, name, role, scopes, created_at, created_by)
     VALUES ('0123456789abcdef01234567', 'acme', '', 'old', 'AGENT', '[]', 0, 'x')`,
  ).run();
  migrateUp(db, MIGRATIONS);
  const store = createApiKeyStore(
    { db, clock: createManualClock() },
    resolveApiKeyOptions({ pepper: randomBytes(32).toString("base64") }),
  );
  t.deepEqual(store.list({ tenant: "acme", includeRevoked: false, afterKeyId: "", limit: 10 })[0]?.invoke, ["*"]);
});
