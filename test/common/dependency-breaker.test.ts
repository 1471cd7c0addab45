import test from "ava";
import {
  createDependencyBreaker,
  DependencyTimeoutError,
  DependencyUnavailableError,
  resolveDependencyBreakerOptions,
} from "../../src/common/dependency-breaker.js";
import { ConfigError } from "../../src/common/errors.js";
import { createSilentLogger } from "../../src/telemetry/logger.js";

const logger = createSilentLogger();
const never = (): Promise<never> => new Promise(() => undefined);
const options = { budgetMs: 30, failuresToTrip: 2, halfOpenAfterMs: 60, probeIntervalMs: 60 };

test("dependency breaker - a call with no answer ends at its budget; misses in a row open the circuit", async (t) => {
  const b = createDependencyBreaker({ logger }, "redis", options);
  t.is(b.state(), "closed");
  t.deepEqual(b.status(), { name: "redis", state: "ok" });
  await t.throwsAsync(b.call(never), { instanceOf: DependencyTimeoutError, message: /within 30 ms/ });
  t.false(b.isOpen(), "one miss is not a pattern");
  await t.throwsAsync(b.call(never), { instanceOf: DependencyTimeoutError });
  t.true(b.isOpen());
  t.is(b.status().state, "down");
  t.regex(b.status().detail ?? "", /not answering \(redis gave no answer within 30 ms\); circuit open/);

  // While open a call is not attempted at all: the caller goes to its fallback at once.
  let attempted = 0;
  const started = performance.now();
  await t.throwsAsync(
    b.call(() => {
      attempted++;
      return Promise.resolve(1);
    }),
    { instanceOf: DependencyUnavailableError },
  );
  t.is(attempted, 0);
  t.true(performance.now() - started < 25, "refused without waiting for any budget");
});

test("dependency breaker - a caller's shorter budget wins, and a call that answers in time resets the count", async (t) => {
  const b = createDependencyBreaker({ logger }, "dge", { ...options, budgetMs: 5000 });
  const started = performance.now();
  await t.throwsAsync(b.call(never, { budgetMs: 20 }), { instanceOf: DependencyTimeoutError, message: /20 ms/ });
  t.true(performance.now() - started < 2000);
  t.is(await b.call(() => Promise.resolve("answer")), "answer");
  await t.throwsAsync(b.call(never, { budgetMs: 20 }));
  t.false(b.isOpen(), "the success in between broke the run of failures");
});

test("dependency breaker - the caller giving up is not the dependency's fault", async (t) => {
  const b = createDependencyBreaker({ logger }, "dge", options);
  for (let i = 0; i < 3; i++) {
    const ac = new AbortController();
    const p = b.call(never, { signal: ac.signal });
    ac.abort(new Error("caller went away"));
    await t.throwsAsync(p, { message: "caller went away" });
  }
  t.false(b.isOpen());
});

test("dependency breaker - answers that prove the dependency alive never open it", async (t) => {
  class Refusal extends Error {}
  const b = createDependencyBreaker({ logger, isFailure: (e) => !(e instanceof Refusal) }, "dge", options);
  for (let i = 0; i < 5; i++) await t.throwsAsync(b.call(() => Promise.reject(new Refusal("invalid argument"))));
  t.false(b.isOpen());
  for (let i = 0; i < 2; i++) await t.throwsAsync(b.call(() => Promise.reject(new Error("connection refused"))));
  t.true(b.isOpen());
});

test("dependency breaker - only the probe tests an open circuit, and an answer closes it", async (t) => {
  const b = createDependencyBreaker({ logger }, "nats", options);
  await t.throwsAsync(b.call(never));
  await t.throwsAsync(b.call(never));
  t.true(b.isOpen());
  // Before halfOpenAfterMs even the probe is refused without being run.
  let probed = 0;
  await t.throwsAsync(
    b.probe(() => Promise.resolve(probed++)),
    { instanceOf: DependencyUnavailableError },
  );
  t.is(probed, 0);
  await new Promise((r) => setTimeout(r, options.halfOpenAfterMs + 20));
  // Callers are still refused after the wait: they never pay for the test call.
  await t.throwsAsync(
    b.call(() => Promise.resolve(1)),
    { instanceOf: DependencyUnavailableError },
  );
  await t.throwsAsync(b.probe(never), { instanceOf: DependencyTimeoutError });
  t.true(b.isOpen(), "a failed test keeps it open");
  await new Promise((r) => setTimeout(r, options.halfOpenAfterMs + 20));
  t.is(await b.probe(() => Promise.resolve("PONG")), "PONG");
  t.is(b.state(), "closed");
  t.is(await b.call(() => Promise.resolve(2)), 2);
});

test("dependency breaker - options are validated with the field named", (t) => {
  t.deepEqual(resolveDependencyBreakerOptions({}, "admin.dependencies.redis", { budgetMs: 100 }), {
    budgetMs: 100,
    failuresToTrip: 3,
    halfOpenAfterMs: 1000,
    probeIntervalMs: 500,
  });
  t.throws(() => resolveDependencyBreakerOptions({ budgetMs: 0 }, "admin.dependencies.redis", { budgetMs: 100 }), {
    instanceOf: ConfigError,
    message: /admin\.dependencies\.redis\.budgetMs/,
  });
  t.throws(() => resolveDependencyBreakerOptions({ budgetMs: 900 }, "x", { budgetMs: 100 }), {
    message: /x\.probeIntervalMs must be at least budgetMs/,
  });
  t.throws(() => resolveDependencyBreakerOptions({ nope: 1 }, "x", { budgetMs: 100 }), { message: /x\.nope/ });
});
