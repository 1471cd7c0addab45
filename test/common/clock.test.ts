import test from "ava";
import { createManualClock, systemClock } from "../../src/common/clock.js";

test("manual clock - advance runs due timers in due-time order, each at its due time", (t) => {
  const clock = createManualClock(0);
  const seen: string[] = [];
  clock.setTimeout(() => seen.push(`b@${clock.now()}`), 20);
  clock.setTimeout(() => seen.push(`a@${clock.now()}`), 10);
  clock.setTimeout(() => seen.push(`c@${clock.now()}`), 20);
  const iv = clock.setInterval(() => seen.push(`i@${clock.now()}`), 15);
  clock.advance(9);
  t.deepEqual(seen, []);
  clock.advance(21);
  t.deepEqual(seen, ["a@10", "i@15", "b@20", "c@20", "i@30"]);
  t.is(clock.now(), 30);
  clock.clearInterval(iv);
  clock.advance(100);
  t.is(seen.length, 5);
  t.is(clock.pendingTimers(), 0);
});

test("manual clock - a timer set by a timer runs in the same advance when it falls due", (t) => {
  const clock = createManualClock(0);
  const seen: number[] = [];
  clock.setTimeout(() => clock.setTimeout(() => seen.push(clock.now()), 5), 5);
  clock.advance(10);
  t.deepEqual(seen, [10]);
});

test("manual clock - cleared timeouts never run; sleep resolves on advance and rejects on abort", async (t) => {
  const clock = createManualClock(0);
  let ran = false;
  const h = clock.setTimeout(() => (ran = true), 5);
  clock.clearTimeout(h);
  clock.advance(10);
  t.false(ran);

  const slept = clock.sleep(100);
  await clock.advanceAsync(99);
  t.is(clock.pendingTimers(), 1, "not resolved before it is due");
  await clock.advanceAsync(1);
  await slept;
  t.is(clock.now(), 110);

  const ac = new AbortController();
  const aborted = clock.sleep(100, ac.signal);
  ac.abort();
  await t.throwsAsync(aborted, { name: "AbortError" });
  t.is(clock.pendingTimers(), 0, "an aborted sleep leaves no timer behind");
  await t.throwsAsync(clock.sleep(1, ac.signal), { name: "AbortError" });
});

test("manual clock - advanceAsync lets awaiting code schedule its next timer in time", async (t) => {
  const clock = createManualClock(0);
  const seen: number[] = [];
  const loop = (async () => {
    for (let i = 0; i < 3; i++) {
      await clock.sleep(10);
      seen.push(clock.now());
    }
  })();
  await clock.advanceAsync(30);
  await loop;
  t.deepEqual(seen, [10, 20, 30]);
});

test("system clock - sleep waits and aborts", async (t) => {
  const started = systemClock.now();
  await systemClock.sleep(5);
  t.true(systemClock.now() - started >= 4);
  const ac = new AbortController();
  const p = systemClock.sleep(60_000, ac.signal);
  ac.abort();
  await t.throwsAsync(p, { name: "AbortError" });
});
