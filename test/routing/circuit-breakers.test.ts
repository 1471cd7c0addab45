import test from "ava";
import { BrokenCircuitError } from "cockatiel";
import { createManualClock } from "../../src/common/clock.js";
import { createCircuitBreakers, type CircuitStateName } from "../../src/routing/circuit-breakers.js";

class AgentDown extends Error {}
const fail = () => Promise.reject(new AgentDown("down"));
const ok = () => Promise.resolve("ok");

function setup() {
  const clock = createManualClock(0);
  const changes: CircuitStateName[] = [];
  const breakers = createCircuitBreakers(
    { clock, isFailure: (e) => e instanceof AgentDown, onStateChange: (_id, s) => changes.push(s) },
    { consecutiveFailures: 3, halfOpenAfterMs: 300 },
  );
  return { clock, changes, breakers, b: breakers.get("a1") };
}

test("circuit breakers - opens after consecutive failures; a success resets the count", async (t) => {
  const { breakers, b } = setup();
  await t.throwsAsync(b.execute(fail));
  await t.throwsAsync(b.execute(fail));
  t.is(await b.execute(ok), "ok");
  await t.throwsAsync(b.execute(fail));
  await t.throwsAsync(b.execute(fail));
  t.is(breakers.state("a1"), "closed");
  // Errors that say nothing about the agent do not count.
  await t.throwsAsync(b.execute(() => Promise.reject(new Error("bad request"))));
  t.is(breakers.state("a1"), "closed");
  await t.throwsAsync(b.execute(fail));
  t.is(breakers.state("a1"), "open");
  t.false(breakers.isRoutable("a1"));
  await t.throwsAsync(b.execute(ok), { instanceOf: BrokenCircuitError });
});

test("circuit breakers - half-opens on the clock, one probe closes or reopens it", async (t) => {
  const { clock, changes, breakers, b } = setup();
  for (let i = 0; i < 3; i++) await t.throwsAsync(b.execute(fail));
  clock.advance(299);
  t.false(breakers.isRoutable("a1"));
  await t.throwsAsync(b.execute(ok), { instanceOf: BrokenCircuitError });
  clock.advance(1);
  t.true(breakers.isRoutable("a1"), "due for a probe");
  // A failed probe opens it again for another full halfOpenAfter.
  await t.throwsAsync(b.execute(fail), { instanceOf: AgentDown });
  t.is(breakers.state("a1"), "open");
  clock.advance(299);
  t.false(breakers.isRoutable("a1"));
  clock.advance(1);
  // While the probe is in flight the agent is not routable and other calls wait for it.
  let release!: (v: string) => void;
  const probe = b.execute(() => new Promise<string>((r) => (release = r)));
  t.is(breakers.state("a1"), "half-open");
  t.false(breakers.isRoutable("a1"));
  const waiting = b.execute(ok);
  await new Promise((r) => setImmediate(r));
  release("probed");
  t.is(await probe, "probed");
  t.is(await waiting, "ok");
  t.is(breakers.state("a1"), "closed");
  t.deepEqual(changes, ["open", "half-open", "open", "half-open", "closed"]);
});

test("circuit breakers - a probe failing for a reason not the agent's closes the circuit; forget resets", async (t) => {
  const { clock, breakers, b } = setup();
  for (let i = 0; i < 3; i++) await t.throwsAsync(b.execute(fail));
  clock.advance(300);
  await t.throwsAsync(b.execute(() => Promise.reject(new Error("cancelled"))));
  t.is(breakers.state("a1"), "closed");
  for (let i = 0; i < 3; i++) await t.throwsAsync(b.execute(fail));
  breakers.forget("a1");
  t.is(breakers.state("a1"), "closed");
  t.is(await breakers.get("a1").execute(ok), "ok");
});
