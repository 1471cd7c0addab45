import test from "ava";
import { Writable } from "node:stream";
import { toJson } from "@bufbuild/protobuf";
import type { ConnectError } from "@connectrpc/connect";
import { Code, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { AgentRegistryService, RegisterAgentRequestSchema } from "../../gen/nops/kernel/v1/agent_registry_pb.js";
import { createManualClock } from "../../src/common/clock.js";
import { DEFAULT_KERNEL_OPTIONS } from "../../src/kernel/kernel-options.js";
import { createAuditLog } from "../../src/audit/audit-log.js";
import { createRegistry } from "../../src/registry/registry.js";
import { createRegistryService } from "../../src/registry/registry-service.js";
import { bindService } from "../../src/server/bind-service.js";
import {
  correlationInterceptor,
  errorMappingInterceptor,
  loggingInterceptor,
} from "../../src/server/core-interceptors.js";
import { createHttpServer } from "../../src/server/http-server.js";
import { kLogger } from "../../src/server/interceptor.js";
import { openDatabase } from "../../src/store/database.js";
import { migrateUp } from "../../src/store/migrator.js";
import { MIGRATIONS } from "../../src/store/migrations/index.js";
import { createOutbox } from "../../src/store/outbox.js";
import { createSqliteOutboxStore } from "../../src/store/outbox-store.js";
import { createLogger, createSilentLogger } from "../../src/telemetry/logger.js";
import { createRedactingDestination, scrubLine, scrubRulesFrom } from "../../src/telemetry/redacting-destination.js";

const EMAIL = "alice.liddell@example.com";
const KEY_ID = "0123456789abcdef01234567";
const SECRET = "Zm9vYmFyYmF6cXV4cXV1eHF1dXhxdXV4cXV1eHF1dXg";
const API_KEY = `nops_${KEY_ID}_${SECRET}`;

test("redaction - an e-mail and an API key given to an RPC never appear in logs", async (t) => {
  const lines: string[] = [];
  const capture = new Writable({
    write(chunk: Buffer, _enc, cb) {
      lines.push(...chunk.toString("utf8").split("\n").filter(Boolean));
      cb();
    },
  });
  // What src/kernel/start-kernel.ts wires: configured paths for where PII is known to sit, and the scrubbing
  // destination for values that show up anywhere else (an error message echoing input).
  const logger = createLogger(
    { level: "debug", redactPaths: ["request.labels.*"] },
    createRedactingDestination(capture, scrubRulesFrom([])),
  );
  const clock = createManualClock(1_700_000_000_000);
  const db = openDatabase({ path: ":memory:" });
  migrateUp(db, MIGRATIONS);
  const silent = createSilentLogger();
  const registry = createRegistry(
    {
      db,
      events: createOutbox(createSqliteOutboxStore(db), { source: "edge-1", clock }),
      audit: createAuditLog(db, clock),
      clock,
      logger: silent,
    },
    DEFAULT_KERNEL_OPTIONS.registry,
  );
  const impl = createRegistryService({ registry, actorOf: () => "test", clock }, DEFAULT_KERNEL_OPTIONS.registry);
  const registerAgent = impl.registerAgent.bind(impl);
  // A careless handler: logs the whole request and every header through the request logger.
  impl.registerAgent = (req, ctx) => {
    ctx.values
      .get(kLogger)
      ?.get()
      .info(
        { request: toJson(RegisterAgentRequestSchema, req), headers: Object.fromEntries(ctx.requestHeader) },
        "register request",
      );
    return registerAgent(req, ctx);
  };
  const chain = [
    correlationInterceptor(logger.child({ component: "rpc" })),
    loggingInterceptor(),
    errorMappingInterceptor(),
  ];
  const server = createHttpServer({
    services: [bindService(AgentRegistryService, impl, chain)],
    routes: {},
    limits: DEFAULT_KERNEL_OPTIONS.limits,
  });
  const port = await server.listen("127.0.0.1", 0);
  t.teardown(async () => {
    await server.shutdown(0);
    registry.close();
    db.close();
  });
  const client = createClient(
    AgentRegistryService,
    createConnectTransport({ baseUrl: `http://127.0.0.1:${port}`, httpVersion: "1.1" }),
  );
  const headers = { "x-api-key": API_KEY, authorization: `Bearer ${API_KEY}` };
  const input = {
    tenant: "acme",
    name: "mailer",
    version: "1",
    endpoint: "127.0.0.1:50061",
    labels: { owner: EMAIL, key: API_KEY },
  };
  await client.registerAgent(input, { headers });
  // Invalid endpoint: the validation message echoes the input, and the access log logs the message.
  const err = await t.throwsAsync(client.registerAgent({ ...input, endpoint: `${EMAIL}/${API_KEY}` }, { headers }));
  t.is((err as ConnectError).code, Code.InvalidArgument);

  const parsed = lines.map((l) => JSON.parse(l) as Record<string, unknown>);
  const requestLines = parsed.filter((l) => l.msg === "register request");
  t.is(requestLines.length, 2, "the handler logged both requests");
  t.true(
    parsed.some((l) => l.msg === "rpc" && l.code === "InvalidArgument"),
    "the failed call reached the access log",
  );
  const first = requestLines[0] as { request: { labels: Record<string, string> }; headers: Record<string, string> };
  t.deepEqual(first.request.labels, { owner: "[redacted]", key: "[redacted]" }, "configured paths are censored");
  t.is(first.headers["x-api-key"], "[redacted]");
  t.is(first.headers.authorization, "[redacted]");
  for (const line of lines) {
    t.false(line.includes(EMAIL), `e-mail leaked: ${line}`);
    t.false(line.includes(SECRET), `API key leaked: ${line}`);
    t.false(line.includes("alice.liddell"), `e-mail local part leaked: ${line}`);
  }
});

test("redaction - the scrubber removes values wherever they sit and keeps the rest", (t) => {
  const jwt = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhZ2VudCJ9.c2lnbmF0dXJl";
  const line = JSON.stringify({
    msg: `denied ${EMAIL} with ${API_KEY}`,
    auth: `Bearer ${jwt}`,
    id: "spiffe://nops.local/nops/tenant/acme/agent/a",
  });
  const out = scrubLine(line);
  t.false(out.includes(EMAIL));
  t.false(out.includes(SECRET));
  t.false(out.includes(jwt));
  t.true(out.includes(`nops_${KEY_ID}_[redacted]`), "the key id stays for correlation");
  t.true(out.includes("spiffe://nops.local/nops/tenant/acme/agent/a"), "SPIFFE ids are not PII");
  t.is(scrubLine("card 4111-1111-1111-1111", scrubRulesFrom(["\\b(?:\\d[ -]?){13,16}\\b"])), "card [redacted]");
});
