import test from "ava";
import { DependencyUnavailableError } from "../../src/common/dependency-breaker.js";
import { createRedisClient } from "../../src/store/redis-client.js";
import { createNonceStore } from "../../src/identity/request-signing/nonce-store.js";
import { createSilentLogger } from "../../src/telemetry/logger.js";
import { systemClock } from "../../src/common/clock.js";
import { startRedisServer } from "../helpers/redis-server.js";
import { waitFor } from "../helpers/processes.js";

const logger = createSilentLogger();

test("redis client - a hung server costs one budget per command until the breaker opens, then nothing; recovers", async (t) => {
  const server = await startRedisServer();
  t.teardown(() => server.kill());
  const redis = createRedisClient(
    { logger },
    {
      url: `redis://127.0.0.1:${server.port}`,
      budgetMs: 80,
      failuresToTrip: 3,
      halfOpenAfterMs: 200,
      probeIntervalMs: 100,
    },
  );
  t.teardown(() => redis.close());
  redis.start();
  await waitFor(() => redis.client.status === "ready", "redis ready", 10_000);
  t.is(await redis.client.set("k", "v"), "OK");
  t.is(await redis.client.get("k"), "v");
  t.deepEqual(redis.status(), { name: "redis", state: "ok" });

  process.kill(server.pid, "SIGSTOP");
  let frozen = true;
  const resume = () => {
    if (frozen) process.kill(server.pid, "SIGCONT");
    frozen = false;
  };
  t.teardown(resume);
  try {
    const started = performance.now();
    await t.throwsAsync(redis.client.get("k"), { message: /gave no answer within 80 ms/ });
    t.true(performance.now() - started < 1000, "bounded by the budget, not by a TCP timeout");
    // The background PING misses too: the breaker opens even without more traffic.
    await waitFor(() => redis.breaker.isOpen(), "breaker open", 5000);
    t.is(redis.status().state, "down");
    t.regex(redis.status().detail ?? "", /not answering/);
    t.is(redis.client.status, "ready", "the TCP connection is still up: only the breaker sees the hang");

    const fast = performance.now();
    await t.throwsAsync(redis.client.get("k"), { instanceOf: DependencyUnavailableError });
    t.true(performance.now() - fast < 20, "refused at once");
    // A caller with a fallback (the nonce store) answers from memory, without waiting.
    const nonces = createNonceStore({ redis: redis.client, clock: systemClock, logger });
    t.true(await nonces.claim("n1", 60_000));
    t.false(await nonces.claim("n1", 60_000), "replays are still caught, in memory");
  } finally {
    resume();
  }
  await waitFor(() => !redis.breaker.isOpen(), "breaker closed by the probe", 10_000);
  t.deepEqual(redis.status(), { name: "redis", state: "ok" });
  t.is(await redis.client.get("k"), "v");
});

test("redis client - a stopped server is down at once (connection refused), without the breaker", async (t) => {
  const server = await startRedisServer();
  const redis = createRedisClient(
    { logger },
    {
      url: `redis://127.0.0.1:${server.port}`,
      budgetMs: 80,
      failuresToTrip: 3,
      halfOpenAfterMs: 200,
      probeIntervalMs: 100,
    },
  );
  t.teardown(() => redis.close());
  await waitFor(() => redis.client.status === "ready", "redis ready", 10_000);
  await server.kill();
  await waitFor(() => redis.status().state === "down", "down", 10_000);
  t.regex(redis.status().detail ?? "", /^redis connection /);
  await t.throwsAsync(redis.client.get("k"), { message: /Stream isn't writeable|Connection is closed/ });
});
