// The reference DGE's runtime (issue 13 item 10): classification runs in worker threads, so one large or
// adversarial request does not hold up others; each request has a time budget that fails closed, and a size cap.
import { Code, ConnectError } from "@connectrpc/connect";
import test, { type ExecutionContext } from "ava";
import { systemClock } from "../../src/common/clock.js";
import { createDgeClient } from "../../src/clients/dge-client.js";
import { createEgressGuard, NO_VERDICT_REASONS, resolveEgressGuardOptions } from "../../src/egress/index.js";
import { resolveDgeServerOptions, startDgeServer, type DgeServer } from "../../packages/reference-dge/src/index.js";
import { EgressClass, Tier, Verdict } from "../../gen/nops/dge/v1/dge_pb.js";
import { DGE_KEYS, makeMeter, makeStore, silent, waitUntil } from "../fixtures/dge-helpers.js";

/**
 * Input that is slow for the rules: every 16 characters a phone number, each parsed and checked against
 * the numbering plan (1 MB took 10 s here, 4 MB most of a minute). The normalising classifier is fast on
 * 4 MB of "1 1 1 ..." (a quarter of a second), so that is no longer the adversarial case.
 */
const PHONES = "+1 415 555 0100 ";
const ADVERSARIAL_4MB = PHONES.repeat(250_000); // 4,000,000 characters: under the 4 MiB request cap
const ADVERSARIAL_1MB = PHONES.repeat(65_536);

async function startDge(t: ExecutionContext, input: Record<string, unknown>): Promise<DgeServer> {
  const server = await startDgeServer(
    { clock: systemClock, logger: silent },
    resolveDgeServerOptions({ port: 0, keys: DGE_KEYS, ...input }),
  );
  t.teardown(() => server.close());
  return server;
}

function client(server: DgeServer) {
  return createDgeClient(
    { clock: systemClock },
    { url: server.url, protocol: "grpc", keys: DGE_KEYS, maxSkewMs: 300_000 },
  );
}

test("dge runtime - small Classify calls answer while a 4 MB adversarial request is still running", async (t) => {
  // A budget far past the test's life: the big request is still classifying when the small ones are done.
  const server = await startDge(t, { classifyThreads: 2, classifyBudgetMs: 600_000 });
  const dge = client(server);
  let bigSettled = false;
  const big = dge.classify({ data: ADVERSARIAL_4MB }).then(
    () => (bigSettled = true),
    () => (bigSettled = true),
  );
  // The big request has reached a worker before any small one is sent.
  await waitUntil(() => server.classifyInFlight() === 1, "the 4 MB request to be classifying", 120_000);
  const smallAnswers: EgressClass[] = [];
  for (let i = 0; i < 20; i++) {
    const { classification } = await dge.classify({ data: `ticket ${i}: reply to anna${i}@example.com` });
    smallAnswers.push(classification?.egressClass ?? EgressClass.UNSPECIFIED);
  }
  t.deepEqual(smallAnswers, Array<EgressClass>(20).fill(EgressClass.D2));
  t.false(bigSettled, "every small call was answered before the 4 MB one");
  // The second thread was started for them (one runs always).
  t.is(server.classifyThreadCount(), 2);
  t.is(server.classifyInFlight(), 1);
  await server.close();
  await big;
});

test("dge runtime - a request past its budget is stopped with RESOURCE_EXHAUSTED and its worker replaced", async (t) => {
  const server = await startDge(t, { classifyThreads: 1, classifyBudgetMs: 1000 });
  const dge = client(server);
  // 1 MB of the adversarial input takes far more than 1 s on any machine (10 s here).
  const err = await t.throwsAsync(dge.classify({ data: ADVERSARIAL_1MB }));
  const ce = ConnectError.from(err);
  t.is(ce.code, Code.ResourceExhausted);
  t.regex(ce.rawMessage, /time budget of 1000 ms \(dge\.server\.classifyBudgetMs\)/);
  // The only worker was terminated; a replacement answers the next request.
  const { classification } = await dge.classify({ data: "card 4111 1111 1111 1111" });
  t.is(classification?.egressClass, EgressClass.D4);
  t.is(server.classifyThreadCount(), 1);
  // ValidateEgress without a classification classifies the data the same way, within the same budget.
  const verr = await t.throwsAsync(
    dge.validateEgress({ data: ADVERSARIAL_1MB, destination: "crm", tenant: "acme", tier: Tier.TIER_1 }),
  );
  t.is(ConnectError.from(verr).code, Code.ResourceExhausted);
  const ok = await dge.validateEgress({ data: "status ok", destination: "crm", tenant: "acme", tier: Tier.TIER_1 });
  t.is(ok.verdict, Verdict.ALLOW);
});

test("dge runtime - the guard treats a budget refusal as no verdict: the call is refused, never allowed", async (t) => {
  const server = await startDge(t, {
    classifyThreads: 1,
    classifyBudgetMs: 1000,
    policies: { tiers: { 1: { maxEgressClass: "D4", allowedPiiTypes: ["email", "phone", "credit_card"] } } },
  });
  const store = makeStore();
  const metrics = makeMeter();
  const guard = createEgressGuard(
    {
      clock: systemClock,
      logger: silent,
      meter: metrics.provider.getMeter("test"),
      dge: client(server),
      events: store.events,
      audit: store.audit,
      db: store.db,
    },
    resolveEgressGuardOptions({ tenantTiers: { acme: 1 } }),
  );
  t.teardown(() => guard.close());
  const decision = await guard.check({
    tenant: "acme",
    transport: "http",
    destination: "observability:http://127.0.0.1:9/v1/logs",
    dataType: "",
    payload: ADVERSARIAL_1MB,
  });
  t.false(decision.allowed);
  // dge_error (the DGE's RESOURCE_EXHAUSTED) or, on a machine too loaded to hear it in time, dge_timeout.
  t.true(NO_VERDICT_REASONS.has(decision.reason), decision.reason);
});

test("dge runtime - with one warm thread, one runs while idle; another starts while a request waits and exits once idle", async (t) => {
  const server = await startDge(t, {
    classifyThreads: 2,
    classifyWarmThreads: 1,
    classifyIdleThreadMs: 1000,
    classifyBudgetMs: 600_000,
  });
  t.is(server.classifyThreadCount(), 1);
  // The second thread lives from its start until a second after its request: sampled, not read once.
  let most = 0;
  const sampler = setInterval(() => (most = Math.max(most, server.classifyThreadCount())), 5);
  t.teardown(() => clearInterval(sampler));
  const dge = client(server);
  // The adversarial request holds the one thread (for minutes); the small one waits, so a second thread starts.
  const big = dge.classify({ data: ADVERSARIAL_4MB }).then(
    () => undefined,
    () => undefined,
  );
  await waitUntil(() => server.classifyInFlight() === 1, "the 4 MB request to be classifying", 120_000);
  const { classification } = await dge.classify({ data: "reply to anna@example.com" });
  t.is(classification?.egressClass, EgressClass.D2);
  // The second thread, idle now, exits; the first is still classifying.
  await waitUntil(() => server.classifyThreadCount() === 1, "the idle second thread to exit", 120_000);
  t.is(most, 2);
  t.is(server.classifyInFlight(), 1);
  await server.close();
  await big;
});

test("dge runtime - a caller who gives up costs no thread: a running request finishes, a waiting one leaves the queue", async (t) => {
  const server = await startDge(t, { classifyThreads: 1, classifyBudgetMs: 600_000 });
  const dge = client(server);
  const startedThreads = server.classifyThreadStarts();
  const refusal = (p: Promise<unknown>) =>
    p.then(
      () => undefined,
      (err: unknown) => ConnectError.from(err).code,
    );
  // A few seconds of rules on the one thread, abandoned by its caller once it runs.
  const running = new AbortController();
  const first = refusal(dge.classify({ data: PHONES.repeat(30_000) }, { signal: running.signal }));
  await waitUntil(() => server.classifyInFlight() === 1, "the long request to be classifying", 120_000);
  const waiting = new AbortController();
  const second = refusal(dge.classify({ data: "reply to anna@example.com" }, { signal: waiting.signal }));
  await waitUntil(() => server.classifyInFlight() === 2, "the second request to wait for the thread", 120_000);
  running.abort();
  t.is(await first, Code.Canceled);
  waiting.abort();
  t.is(await second, Code.Canceled);
  // The waiting one left the queue; the running one keeps its thread until it is done.
  await waitUntil(() => server.classifyInFlight() <= 1, "the abandoned waiting request to leave the queue", 120_000);
  await waitUntil(() => server.classifyInFlight() === 0, "the abandoned running request to finish", 120_000);
  const { classification } = await dge.classify({ data: "card 4111 1111 1111 1111" });
  t.is(classification?.egressClass, EgressClass.D4);
  // Read after a request answered: a replacement thread counts once it is ready, which it is by then.
  t.is(server.classifyThreadStarts(), startedThreads, "no thread was terminated and replaced");
});

test("dge runtime - a request over the size cap is refused with RESOURCE_EXHAUSTED naming the limit", async (t) => {
  const server = await startDge(t, { maxRequestBytes: 4096 });
  const err = await t.throwsAsync(client(server).classify({ data: "x".repeat(5000) }));
  const ce = ConnectError.from(err);
  t.is(ce.code, Code.ResourceExhausted);
  t.regex(ce.rawMessage, /4096/);
});

test("dge runtime - options reject bad pool settings by name", (t) => {
  t.throws(() => resolveDgeServerOptions({ keys: DGE_KEYS, classifyThreads: 0 }), {
    message: /dge\.server\.classifyThreads/,
  });
  t.throws(() => resolveDgeServerOptions({ keys: DGE_KEYS, classifyBudgetMs: 1 }), {
    message: /dge\.server\.classifyBudgetMs/,
  });
  t.throws(() => resolveDgeServerOptions({ keys: DGE_KEYS, classifyIdleThreadMs: 5 }), {
    message: /dge\.server\.classifyIdleThreadMs/,
  });
});
