import { createServer, type IncomingMessage } from "node:http";
import type { AddressInfo } from "node:net";
import { readFileSync } from "node:fs";
import { fromBinary } from "@bufbuild/protobuf";
import { Code, ConnectError, type Client } from "@connectrpc/connect";
import test, { type ExecutionContext } from "ava";
import { systemClock } from "../../src/common/clock.js";
import { createDgeClient } from "../../src/clients/dge-client.js";
import {
  createEgressGuard,
  type EgressGuardOptions,
  resolveEgressGuardOptions,
} from "../../src/egress/egress-guard.js";
import { createGuardedFetch } from "../../src/egress/guarded-fetch.js";
import { EgressAllowedSchema, EgressBlockedSchema } from "../../gen/nops/events/v1/egress_events_pb.js";
import { EgressClass, Verdict, type DataGovernanceService } from "../../gen/nops/dge/v1/dge_pb.js";
import { DGE_KEYS, makeMeter, makeStore, silent, spawnDge } from "../fixtures/dge-helpers.js";
import { waitFor } from "../helpers/processes.js";

interface Sample {
  text: string;
  labels: string[];
  form: string;
}
const corpus = JSON.parse(readFileSync(new URL("../fixtures/pii-corpus.json", import.meta.url), "utf8")) as Sample[];

async function echoServer(t: ExecutionContext): Promise<{ url: string; received: string[] }> {
  const received: string[] = [];
  const srv = createServer((req: IncomingMessage, res) => {
    let body = "";
    req.on("data", (d: Buffer) => (body += d.toString()));
    req.on("end", () => {
      received.push(`${req.url ?? ""} ${body}`);
      res.end(body);
    });
  });
  await new Promise<void>((r) => srv.listen(0, "127.0.0.1", r));
  t.teardown(() => new Promise<void>((r) => srv.close(() => r())));
  return { url: `http://127.0.0.1:${(srv.address() as AddressInfo).port}`, received };
}

/** A guard over the DGE at `dge` (a URL) or over `dge` itself (a client double). */
async function setup(
  t: ExecutionContext,
  dge: string | Client<typeof DataGovernanceService>,
  guardInput: Record<string, unknown> = {},
  protocol: "grpc" | "connect" = "grpc",
) {
  const store = makeStore();
  const metrics = makeMeter();
  const options: EgressGuardOptions = resolveEgressGuardOptions({
    tenantTiers: { acme: 1, beta: 2, gov: 3, bunker: "air-gapped" },
    ...guardInput,
  });
  const guard = createEgressGuard(
    {
      clock: systemClock,
      logger: silent,
      meter: metrics.provider.getMeter("test"),
      dge:
        typeof dge === "string"
          ? createDgeClient({ clock: systemClock }, { url: dge, protocol, keys: DGE_KEYS, maxSkewMs: 300_000 })
          : dge,
      events: store.events,
      audit: store.audit,
      db: store.db,
    },
    options,
  );
  t.teardown(() => guard.close());
  return { store, metrics, guard };
}

const PII_PAYLOADS = {
  email: JSON.stringify({ agent: "crm-sync", note: "customer anna.smith@example.com asked for a refund" }),
  ssn: JSON.stringify({ agent: "kyc", applicant: { ssn: "536-22-1234" } }),
  card: JSON.stringify({ agent: "billing", card: "4111 1111 1111 1111", amount: 12 }),
};

test("egress guard - payloads carrying email, SSN and credit card are blocked, audited and never sent", async (t) => {
  const dge = await spawnDge(t);
  const echo = await echoServer(t);
  const { store, metrics, guard } = await setup(t, dge.url);
  const guardedFetch = createGuardedFetch(guard, "observability");
  for (const [kind, body] of Object.entries(PII_PAYLOADS)) {
    const err = await t.throwsAsync(
      guardedFetch(`${echo.url}/v1/logs`, {
        method: "POST",
        body,
        headers: { "x-nops-tenant": "acme", "content-type": "application/json" },
      }),
    );
    t.true(err instanceof ConnectError, kind);
    t.is((err as ConnectError).code, Code.PermissionDenied, kind);
    t.regex((err as ConnectError).rawMessage, /egress blocked: (pii_type_not_allowed|class_exceeds_policy)/, kind);
  }
  t.deepEqual(echo.received, [], "nothing of a blocked call reaches the destination");
  const blocked = store.outbox().filter((e) => e.type === "egress.blocked.v1");
  t.is(blocked.length, 3);
  const decisions = blocked.map((e) => fromBinary(EgressBlockedSchema, e.payload).decision);
  t.deepEqual(
    decisions.map((d) => d?.findings.map((f) => f.type)),
    [["email"], ["us_ssn"], ["credit_card"]],
  );
  t.deepEqual(
    decisions.map((d) => d?.classification),
    ["D2", "D3", "D4"],
  );
  for (const d of decisions) {
    t.is(d?.tenant, "acme");
    t.is(d?.tier, "1");
  }
  // The event is redacted: none of the values appear in it.
  const raw = Buffer.concat(blocked.map((e) => Buffer.from(e.payload))).toString("latin1");
  for (const v of ["anna.smith", "536-22-1234", "4111"]) t.false(raw.includes(v));
  const audit = store.db
    .prepare<[], { action: string; outcome: string; tenant: string }>("SELECT action, outcome, tenant FROM audit_log")
    .all();
  t.deepEqual(
    audit,
    Array.from({ length: 3 }, () => ({ action: "egress.blocked", outcome: "denied", tenant: "acme" })),
  );
  t.true(store.audit.verify().ok);
  const m = await metrics.collect();
  t.deepEqual(
    m.get("egress_guard_requests_total")?.map((p) => [p.attributes, p.value]),
    [[{ result: "blocked", tenant: "acme", tier: "1" }, 3]],
  );
});

test("egress guard - operational metadata without PII passes, is recorded and then served from cache", async (t) => {
  const dge = await spawnDge(t);
  const echo = await echoServer(t);
  // Only the test's own flushes end a window: the guard's timer (eventFlushMs) firing between the five calls
  // below would split their group in two on a slow machine.
  const { store, metrics, guard } = await setup(t, dge.url, { eventFlushMs: 60_000 }, "connect");
  const guardedFetch = createGuardedFetch(guard, "observability");
  const body = JSON.stringify({ agent: "planner-3", latency_ms: 42, status: "ok", queue: "default", edge: "edge-7" });
  for (const tenant of ["acme", "beta", "gov", "acme"]) {
    const res = await guardedFetch(`${echo.url}/v1/metrics`, {
      method: "POST",
      body,
      headers: { "x-nops-tenant": tenant },
    });
    t.is(await res.text(), body);
  }
  t.is(echo.received.length, 4);
  guard.flush();
  const allowed = () => store.outbox().filter((e) => e.type === "egress.allowed.v1");
  // The second acme call was a cache hit: a different decision, so its own event.
  t.deepEqual(
    allowed().map((e) => e.tenant),
    ["acme", "beta", "gov", "acme"],
  );
  // Identical allowed decisions within one flush window coalesce into one event with a count.
  for (let i = 0; i < 5; i++)
    await guardedFetch(`${echo.url}/v1/metrics`, { method: "POST", body, headers: { "x-nops-tenant": "beta" } });
  guard.flush();
  const [group, ...rest] = allowed().slice(4);
  t.is(rest.length, 0);
  const event = fromBinary(EgressAllowedSchema, group!.payload);
  t.like(event, { count: 5, decision: { tenant: "beta", cached: true, reason: "allowed" } });
  t.is(event.payloadBytesTotal, BigInt(5 * event.decision!.payloadBytes));
  t.true(event.latencyMsMax >= event.decision!.latencyMs);
  const direct = {
    tenant: "acme",
    transport: "http",
    destination: `observability:${echo.url}/v1/metrics`,
    dataType: "",
    payload: `/v1/metrics\n${body}`,
  } as const;
  t.false((await guard.check(direct)).cached, "first seen: classified by the DGE");
  const decision = await guard.check(direct);
  t.true(decision.allowed);
  t.true(decision.cached);
  t.is(decision.classification, "D1");
  // The same verdict without an await; a payload never classified needs the DGE.
  t.like(
    guard.checkNow({
      tenant: "acme",
      transport: "http",
      destination: `observability:${echo.url}/v1/metrics`,
      dataType: "",
      payload: `/v1/metrics\n${body}`,
    }),
    { allowed: true, cached: true, classification: "D1" },
  );
  t.is(
    guard.checkNow({
      tenant: "acme",
      transport: "http",
      destination: `observability:${echo.url}/v1/metrics`,
      dataType: "",
      payload: "never seen",
    }),
    undefined,
  );
  t.like(guard.checkNow({ tenant: "bunker", transport: "http", destination: "x", dataType: "", payload: "anything" }), {
    allowed: false,
    reason: "air_gapped",
  });
  const m = await metrics.collect();
  t.true(((m.get("dge_cache_hit_rate")?.[0]?.value as number) ?? 0) > 0);
});

test("egress guard - tier 3 lets 0% of PII through over a corpus of mixed payloads", async (t) => {
  const dge = await spawnDge(t);
  const { guard } = await setup(t, dge.url);
  const positives = corpus.filter((s) => s.labels.length > 0);
  const clean = corpus.filter((s) => s.form === "clean").slice(0, 50);
  let leaked = 0;
  let checked = 0;
  // Mixed payloads: PII embedded among operational fields, one to three items per payload.
  for (let i = 0; i < positives.length; i += 3) {
    const items = positives.slice(i, i + 1 + (i % 3));
    const payload = JSON.stringify({
      agent: `worker-${i % 7}`,
      status: "ok",
      latency_ms: i % 500,
      notes: items.map((s) => s.text),
      trace: clean[i % clean.length]?.text,
    });
    const d = await guard.check({
      tenant: "gov",
      transport: "grpc",
      destination: "inference/nops.inference.v1.Inference/Complete",
      dataType: "nops.inference.v1.CompleteRequest",
      payload,
    });
    checked++;
    if (d.allowed) leaked++;
    else t.is(d.reason, "pii_blocked_tier3");
  }
  t.log(`tier 3: ${leaked} of ${checked} PII payloads allowed`);
  t.true(checked >= 600);
  t.is(leaked, 0);
  for (const s of clean.slice(0, 20)) {
    t.true(
      (
        await guard.check({
          tenant: "gov",
          transport: "grpc",
          destination: "observability",
          dataType: "metrics",
          payload: s.text,
        })
      ).allowed,
      s.text,
    );
  }
});

test("egress guard - DGE killed: every egress is blocked and audited with dge_timeout", async (t) => {
  const dge = await spawnDge(t);
  const { store, metrics, guard } = await setup(t, dge.url, { dgeTimeoutMs: 5000 });
  t.true(
    (
      await guard.check({
        tenant: "acme",
        transport: "http",
        destination: "observability",
        dataType: "",
        payload: "status=ok",
      })
    ).allowed,
  );
  await dge.kill9();
  const decisions = await Promise.all(
    ["acme", "beta", "gov"].flatMap((tenant) =>
      [1, 2].map((n) =>
        guard.check({
          tenant,
          transport: "grpc",
          destination: "billing",
          dataType: "usage",
          payload: `usage tick ${n} for ${tenant}`,
        }),
      ),
    ),
  );
  t.deepEqual(
    decisions.map((d) => [d.allowed, d.reason]),
    Array.from({ length: 6 }, () => [false, "dge_timeout"]),
  );
  // Refusals of one kind within a window are coalesced: the first row at once, the rest counted.
  guard.flush();
  const audit = store.db
    .prepare<[], { details: string }>("SELECT details FROM audit_log WHERE action = 'egress.blocked'")
    .all()
    .map((a) => JSON.parse(a.details) as { reason: string; count: number });
  t.is(
    audit.reduce((n, a) => n + a.count, 0),
    6,
  );
  for (const a of audit) t.is(a.reason, "dge_timeout");
  const events = store.outbox().filter((e) => e.type === "egress.blocked.v1");
  t.is(
    events.reduce((n, e) => n + fromBinary(EgressBlockedSchema, e.payload).count, 0),
    6,
  );
  const m = await metrics.collect();
  t.deepEqual(
    m.get("dge_classification_errors_total")?.map((p) => [p.attributes, p.value]),
    [[{ reason: "dge_timeout" }, 6]],
  );
});

test("egress guard - air-gapped tenants get nothing out, without asking the DGE", async (t) => {
  const { guard, store } = await setup(t, "http://127.0.0.1:9");
  const d = await guard.check({
    tenant: "bunker",
    transport: "http",
    destination: "observability",
    dataType: "",
    payload: "status=ok",
  });
  t.deepEqual([d.allowed, d.reason], [false, "air_gapped"]);
  t.is(store.outbox().filter((e) => e.type === "egress.blocked.v1").length, 1);
});

test("egress guard - DGE_ENABLED=false allows with a warning instead of failing closed", async (t) => {
  const { guard } = await setup(t, "http://127.0.0.1:9", { dgeEnabled: false });
  const d = await guard.check({
    tenant: "acme",
    transport: "http",
    destination: "observability",
    dataType: "",
    payload: PII_PAYLOADS.email,
  });
  t.deepEqual([d.allowed, d.reason], [true, "dge_disabled"]);
});

test("egress guard - a DGE signing with an unknown key is refused (dge_signature_invalid)", async (t) => {
  const dge = await spawnDge(t, { keys: { other: "another-signing-key-0123456789abcdefgh" } });
  const { guard } = await setup(t, dge.url);
  const d = await guard.check({
    tenant: "acme",
    transport: "http",
    destination: "observability",
    dataType: "",
    payload: "status=ok",
  });
  t.deepEqual([d.allowed, d.reason], [false, "dge_signature_invalid"]);
});

test("egress guard - identical calls in flight share one DGE round; a follower outlives the first caller leaving", async (t) => {
  // An in-process DGE whose Classify waits for the test: the calls below are all in flight at once.
  const asked = { classify: 0, validate: 0 };
  let answer!: () => void;
  let held = new Promise<void>((r) => (answer = r));
  const dge = {
    getPolicy: () => Promise.resolve({ policy: { version: "p1", ttlSeconds: 60 } }),
    classify: async (_req: unknown, o?: { signal?: AbortSignal }) => {
      asked.classify++;
      await new Promise<void>((resolve, reject) => {
        void held.then(resolve);
        o?.signal?.addEventListener("abort", () => reject(o.signal!.reason as Error), { once: true });
      });
      return { classification: { egressClass: EgressClass.D1, findings: [] } };
    },
    validateEgress: () => {
      asked.validate++;
      return Promise.resolve({ verdict: Verdict.ALLOW, reasonCode: "", policyVersion: "p1", ttlSeconds: 60 });
    },
  } as unknown as Client<typeof DataGovernanceService>;
  const { guard } = await setup(t, dge);
  const call = (payload: string, signal?: AbortSignal) =>
    guard.check({ tenant: "acme", transport: "grpc", destination: "agent:a", dataType: "", payload, signal });

  const burst = Array.from({ length: 20 }, () => call("status ok"));
  const other = call("status degraded");
  await waitFor(() => asked.classify === 2, "both distinct payloads asked the DGE", 5000);
  answer();
  const decisions = await Promise.all([...burst, other]);
  t.true(decisions.every((d) => d.allowed));
  t.deepEqual(asked, { classify: 2, validate: 2 }, "one round per distinct call, not one per waiting call");
  t.is(decisions.filter((d) => !d.cached).length, 2, "each round's own caller asked; the rest were answered by it");

  // The round's own caller leaves: its followers ask again instead of failing with its cancellation.
  held = new Promise<void>((r) => (answer = r));
  const leaving = new AbortController();
  const first = call("queue depth 3", leaving.signal);
  const followers = [call("queue depth 3"), call("queue depth 3")];
  await waitFor(() => asked.classify === 3, "the first caller's round started", 5000);
  leaving.abort(new Error("caller gone"));
  t.like(await first, { allowed: false, reason: "caller_aborted" });
  await waitFor(() => asked.classify === 4, "a follower asked for itself", 5000);
  answer();
  t.true((await Promise.all(followers)).every((d) => d.allowed));
  t.is(asked.classify, 4, "the followers shared the second round");
});

test("egress guard - options reject bad fields by name", (t) => {
  t.throws(() => resolveEgressGuardOptions({ tenantTiers: { acme: 4 } }), {
    message: /egress\.guard\.tenantTiers\.acme/,
  });
  t.throws(() => resolveEgressGuardOptions({ dgeTimeoutMs: -1 }), { message: /egress\.guard\.dgeTimeoutMs/ });
  t.throws(() => resolveEgressGuardOptions({ approvers: { a: "short" } }), { message: /egress\.guard\.approvers\.a/ });
  t.is(resolveEgressGuardOptions({}).dgeTimeoutMs, 5000);
});
