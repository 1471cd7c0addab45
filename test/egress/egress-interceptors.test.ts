import { randomUUID } from "node:crypto";
import { EventEnvelopeSchema, Origin } from "../../gen/nops/events/v1/envelope_pb.js";
import * as grpc from "@grpc/grpc-js";
import { create, fromBinary, toBinary, type MessageInitShape } from "@bufbuild/protobuf";
import { EgressBlockedSchema } from "../../gen/nops/events/v1/egress_events_pb.js";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport, connectNodeAdapter } from "@connectrpc/connect-node";
import { createServer, type ServerHttp2Session } from "node:http2";
import type { AddressInfo } from "node:net";
import test, { type ExecutionContext } from "ava";
import { systemClock } from "../../src/common/clock.js";
import { createDgeClient } from "../../src/clients/dge-client.js";
import { createEgressGuard, resolveEgressGuardOptions } from "../../src/egress/egress-guard.js";
import {
  createConnectEgressInterceptor,
  createEgressPreSend,
  type EgressPreSend,
} from "../../src/egress/egress-interceptors.js";
import { createAgentH2Client, type AgentH2Client } from "../../src/routing/agent-h2-client.js";
import { createNatsEgressHook, subjectMatches } from "../../src/egress/nats-egress-hook.js";
import { DataGovernanceService, ClassifyResponseSchema } from "../../gen/nops/dge/v1/dge_pb.js";
import { DGE_KEYS, makeMeter, makeStore, silent, spawnDge } from "../fixtures/dge-helpers.js";

async function makeGuard(t: ExecutionContext) {
  const dge = await spawnDge(t);
  const store = makeStore();
  const guard = createEgressGuard(
    {
      clock: systemClock,
      logger: silent,
      meter: makeMeter().provider.getMeter("t"),
      dge: createDgeClient(
        { clock: systemClock },
        { url: dge.url, protocol: "grpc", keys: DGE_KEYS, maxSkewMs: 300_000 },
      ),
      events: store.events,
      audit: store.audit,
      db: store.db,
    },
    resolveEgressGuardOptions({ tenantTiers: { acme: 1 } }),
  );
  t.teardown(() => guard.close());
  return Object.assign(guard, { store });
}

const text = (s: string): Uint8Array => new TextEncoder().encode(s);

/** The router's agent client to a loopback port, with `preSend` as its Egress Guard hook. */
function guardedAgentClient(t: ExecutionContext, port: number, preSend: EgressPreSend): AgentH2Client {
  const client = createAgentH2Client(
    { target: `127.0.0.1:${port}`, preSend, clock: systemClock, logger: silent },
    { sessions: 1, maxMessageBytes: 4 << 20, maxReconnectBackoffMs: 1000 },
  );
  t.teardown(() => client.destroy());
  return client;
}

test("egress interceptors - pre-send hook (the agent client): a blocked unary call fails PERMISSION_DENIED and never reaches the server; a clean one does", async (t) => {
  const guard = await makeGuard(t);
  const received: string[] = [];
  const def = {
    Echo: {
      path: "/test.Echo/Echo",
      requestStream: false,
      responseStream: false,
      requestSerialize: (s: string) => Buffer.from(s),
      requestDeserialize: (b: Buffer) => b.toString(),
      responseSerialize: (s: string) => Buffer.from(s),
      responseDeserialize: (b: Buffer) => b.toString(),
    },
  } satisfies grpc.ServiceDefinition;
  const server = new grpc.Server();
  server.addService(def, {
    Echo: (call: grpc.ServerUnaryCall<string, string>, cb: grpc.sendUnaryData<string>) => {
      received.push(call.request);
      cb(null, call.request);
    },
  });
  const port = await new Promise<number>((res, rej) =>
    server.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (e, p) => (e ? rej(e) : res(p))),
  );
  t.teardown(() => server.forceShutdown());
  const client = guardedAgentClient(t, port, createEgressPreSend(guard, "sandbox"));
  const call = (msg: string): Promise<string> =>
    client.unary(
      "/test.Echo/Echo",
      msg,
      (m) => text(m),
      (b) => new TextDecoder().decode(b),
      {
        deadline: Date.now() + 30_000,
        headers: { "x-nops-tenant": "acme" },
        signal: new AbortController().signal,
      },
    );
  const err = ConnectError.from(await t.throwsAsync(call("card 4111-1111-1111-1111")));
  t.is(err.code, Code.PermissionDenied);
  t.regex(err.rawMessage, /egress blocked/);
  t.is(await call("status=ok queue=default"), "status=ok queue=default");
  t.deepEqual(received, ["status=ok queue=default"]);
});

test("egress interceptors - Connect: a blocked call throws PERMISSION_DENIED before it is sent", async (t) => {
  const guard = await makeGuard(t);
  let calls = 0;
  const srv = createServer(
    connectNodeAdapter({
      routes: (r) =>
        r.service(DataGovernanceService, {
          classify: () => {
            calls++;
            return create(ClassifyResponseSchema, {});
          },
        }),
    }),
  );
  const sessions = new Set<ServerHttp2Session>();
  srv.on("session", (s) => sessions.add(s));
  await new Promise<void>((r) => srv.listen(0, "127.0.0.1", r));
  t.teardown(() => {
    for (const s of sessions) s.destroy();
    return new Promise<void>((r) => srv.close(() => r()));
  });
  const transport = createConnectTransport({
    baseUrl: `http://127.0.0.1:${(srv.address() as AddressInfo).port}`,
    httpVersion: "2",
    interceptors: [createConnectEgressInterceptor(guard, "compliance")],
  });
  const client = createClient(DataGovernanceService, transport);
  const headers = { "x-nops-tenant": "acme" };
  const err = await t.throwsAsync(client.classify({ data: "iban DE89 3704 0044 0532 0130 00" }, { headers }));
  t.is(ConnectError.from(err).code, Code.PermissionDenied);
  t.is(calls, 0);
  await client.classify({ data: "status ok" }, { headers });
  t.is(calls, 1);
});

test("egress interceptors - NATS pre-publish hook: hub-crossing subjects are checked, local ones pass", async (t) => {
  const guard = await makeGuard(t);
  const hook = createNatsEgressHook(guard, { crossingSubjects: ["nops.events.*.>"] });
  t.like(await hook("nops.local.heartbeat", new TextEncoder().encode("anna@example.com")), {
    allowed: true,
    reason: "local_subject",
  });
  t.like(
    await hook("nops.events.acme.agent.registered.v1", new TextEncoder().encode('{"contact":"anna@example.com"}')),
    { allowed: false },
  );
  t.like(await hook("nops.events.acme.agent.registered.v1", new TextEncoder().encode('{"agent":"planner"}')), {
    allowed: true,
  });
  t.true(subjectMatches("a.*.c", "a.b.c"));
  t.false(subjectMatches("a.>", "a"));
});

function envelope(init: MessageInitShape<typeof EventEnvelopeSchema>): Uint8Array {
  return toBinary(EventEnvelopeSchema, create(EventEnvelopeSchema, { id: randomUUID(), source: "edge-test", ...init }));
}

test("egress interceptors - NATS hook: only the kernel's own egress/dge records are exempt, by origin, not subject text", async (t) => {
  const guard = await makeGuard(t);
  const hook = createNatsEgressHook(guard, { crossingSubjects: ["nops.events.*.>"] });
  const subject = "nops.events.acme.egress.blocked.v1";
  const pii = new TextEncoder().encode("card 4111 1111 1111 1111 for anna@example.com");
  t.like(await hook(subject, envelope({ type: "egress.blocked.v1", payload: pii, origin: Origin.KERNEL })), {
    allowed: true,
    reason: "guard_record",
  });
  for (const origin of [Origin.CALLER, Origin.UNSPECIFIED])
    t.like(await hook(subject, envelope({ type: "egress.blocked.v1", payload: pii, origin })), { allowed: false });
});

test("egress interceptors - NATS hook: the tenant is the subject's, no header changes it; caller headers are classified", async (t) => {
  const guard = await makeGuard(t);
  const hook = createNatsEgressHook(guard, { crossingSubjects: ["nops.events.*.>"] });
  const clean = envelope({ type: "orders.created.v1", payload: new TextEncoder().encode('{"order":"o-1"}') });
  const headersOf = (h: Record<string, string>) => ({ get: (n: string) => h[n] ?? "", names: () => Object.keys(h) });
  const asGlobex = await hook("nops.events.globex.orders.created.v1", clean);
  const claimingAcme = await hook(
    "nops.events.globex.orders.created.v1",
    clean,
    headersOf({ "x-nops-tenant": "acme" }),
  );
  t.is(claimingAcme.tier, asGlobex.tier, "decided under the subject's tenant");
  t.like(
    await hook("nops.events.globex.orders.created.v1", clean, headersOf({ note: "mail anna@example.com" })),
    { allowed: false },
    "PII in a caller header is judged like PII in the payload",
  );
  // Kernel-minted structure (event id, correlation id, source) is not data.
  const structural = envelope({
    type: "orders.created.v1",
    correlationId: "anna@example.com",
    payload: new TextEncoder().encode('{"order":"o-1"}'),
  });
  t.like(await hook("nops.events.globex.orders.created.v1", structural), { allowed: true });
});

test("egress interceptors - NATS hook: the subject is classified, and a blocked record names only the tenant's stream", async (t) => {
  const guard = await makeGuard(t);
  const hook = createNatsEgressHook(guard, { crossingSubjects: ["nops.events.*.>"] });
  const clean = envelope({ type: "users.updated.v1", payload: new TextEncoder().encode('{"status":"ok"}') });
  t.like(await hook("nops.events.acme.users.536-22-1234.updated", clean), { allowed: false });
  t.like(await hook("nops.events.acme.users.u-17.updated", clean), { allowed: true });
  const blocked = guard.store.outbox().filter((e) => e.type === "egress.blocked.v1");
  t.is(blocked.length, 1);
  const d = fromBinary(EgressBlockedSchema, blocked[0]!.payload).decision;
  t.deepEqual([d?.destination, d?.dataType, d?.transport], ["nops.events.acme", "event", "nats"]);
  const audit = JSON.stringify(guard.store.db.prepare("SELECT * FROM audit_log").all());
  for (const raw of [Buffer.from(blocked[0]!.payload).toString("latin1"), audit]) t.false(raw.includes("536-22-1234"));
});

test("egress interceptors - Connect and the agent client: headers and metadata are classified with the message", async (t) => {
  const guard = await makeGuard(t);
  let calls = 0;
  const srv = createServer(
    connectNodeAdapter({
      routes: (r) =>
        r.service(DataGovernanceService, {
          classify: () => {
            calls++;
            return create(ClassifyResponseSchema, {});
          },
        }),
    }),
  );
  const sessions = new Set<ServerHttp2Session>();
  srv.on("session", (s) => sessions.add(s));
  await new Promise<void>((r) => srv.listen(0, "127.0.0.1", r));
  t.teardown(() => {
    for (const s of sessions) s.destroy();
    return new Promise<void>((r) => srv.close(() => r()));
  });
  const transport = createConnectTransport({
    baseUrl: `http://127.0.0.1:${(srv.address() as AddressInfo).port}`,
    httpVersion: "2",
    interceptors: [createConnectEgressInterceptor(guard, "compliance")],
  });
  const client = createClient(DataGovernanceService, transport);
  const err = await t.throwsAsync(
    client.classify({ data: "status ok" }, { headers: { "x-nops-tenant": "acme", "x-note": "mail anna@example.com" } }),
  );
  t.is(ConnectError.from(err).code, Code.PermissionDenied);
  t.is(calls, 0);
  await client.classify({ data: "status ok" }, { headers: { "x-nops-tenant": "acme", "x-note": "batch 7" } });
  t.is(calls, 1);

  // The agent client's pre-send hook: the same rule for metadata, before the call starts.
  const server = new grpc.Server();
  let grpcCalls = 0;
  server.addService(
    {
      classify: {
        path: "/nops.dge.v1.DataGovernanceService/Classify",
        requestStream: false,
        responseStream: false,
        requestSerialize: (v: Uint8Array) => Buffer.from(v),
        requestDeserialize: (b: Buffer) => b,
        responseSerialize: (v: Uint8Array) => Buffer.from(v),
        responseDeserialize: (b: Buffer) => b,
      },
    },
    {
      classify: (_call: unknown, cb: grpc.sendUnaryData<Uint8Array>) => {
        grpcCalls++;
        cb(null, new Uint8Array());
      },
    },
  );
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (e, p) => (e ? reject(e) : resolve(p))),
  );
  t.teardown(() => server.forceShutdown());
  const raw = guardedAgentClient(t, port, createEgressPreSend(guard, "dge-raw"));
  const call = (note: string) =>
    raw
      .unary(
        "/nops.dge.v1.DataGovernanceService/Classify",
        text("status ok"),
        (v) => v,
        (b) => b,
        {
          deadline: Date.now() + 30_000,
          headers: { "x-nops-tenant": "acme", "x-note": note },
          signal: new AbortController().signal,
        },
      )
      .then(
        () => undefined,
        (e: unknown) => ConnectError.from(e).code,
      );
  t.is(await call("mail anna@example.com"), Code.PermissionDenied);
  t.is(grpcCalls, 0);
  t.is(await call("batch 7"), undefined);
  t.is(grpcCalls, 1);
});
