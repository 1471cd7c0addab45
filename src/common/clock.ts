/** A scheduled timer; `unref` lets the process exit while it is pending (no-op on the manual clock). */
export interface TimerHandle {
  unref(): unknown;
}

/**
 * Time and timers; components take one so tests drive TTLs, backoff, sweeps and ticks with a
 * manual clock instead of sleeping.
 */
export interface Clock {
  /** Milliseconds since the Unix epoch. */
  now(): number;
  setTimeout(fn: () => void, ms: number): TimerHandle;
  clearTimeout(handle: TimerHandle | undefined): void;
  setInterval(fn: () => void, ms: number): TimerHandle;
  clearInterval(handle: TimerHandle | undefined): void;
  /** Resolves after `ms`; rejects with an AbortError (or the signal's own Error reason) when it aborts first. */
  sleep(ms: number, signal?: AbortSignal): Promise<void>;
}

// The signal's reason when one was given, else an AbortError as node:timers/promises rejects with.
function abortReason(signal: AbortSignal): Error {
  if (signal.reason instanceof Error && !(signal.reason instanceof DOMException)) return signal.reason;
  return Object.assign(new Error("The operation was aborted", { cause: signal.reason }), {
    name: "AbortError",
    code: "ABORT_ERR",
  });
}

// One sleep for both clocks: the timer comes from the clock, the abort handling is the same.
function sleepOn(clock: Pick<Clock, "setTimeout" | "clearTimeout">, ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(abortReason(signal));
      return;
    }
    const onAbort = (): void => {
      clock.clearTimeout(timer);
      reject(abortReason(signal!));
    };
    const timer = clock.setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

/** The real clock: Date.now and Node's timers. */
export const systemClock: Clock = {
  now: () => Date.now(),
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: (h) => clearTimeout(h as NodeJS.Timeout | undefined),
  setInterval: (fn, ms) => setInterval(fn, ms),
  clearInterval: (h) => clearInterval(h as NodeJS.Timeout | undefined),
  sleep: (ms, signal) => sleepOn(systemClock, ms, signal),
};

/** A clock that only moves when told to (tests): timers run when `advance` passes their due time. */
export interface ManualClock extends Clock {
  /** Moves time forward by `ms`, running every timer that falls due, in due-time order, at its due time. */
  advance(ms: number): void;
  /**
   * As `advance`, but lets promise continuations and I/O callbacks run after each timer
   * (a timer that resolves a sleep lets the awaiting code schedule its next timer in time).
   */
  advanceAsync(ms: number): Promise<void>;
  /** Sets the time (forward runs due timers, as `advance`). */
  set(ms: number): void;
  /** Timers waiting to run. */
  pendingTimers(): number;
}

interface ManualTimer {
  id: number;
  due: number;
  fn: () => void;
  /** Repeat period of an interval. */
  every?: number;
}

/** Creates a manual clock starting at `startMs`. */
export function createManualClock(startMs = Date.UTC(2026, 0, 1)): ManualClock {
  let t = startMs;
  let nextId = 1;
  const timers = new Map<number, ManualTimer>();
  const handle = (id: number): TimerHandle & { id: number } => ({ id, unref: () => undefined });
  const schedule = (fn: () => void, ms: number, every?: number): TimerHandle => {
    const id = nextId++;
    // Node runs a timer of 0 or less after 1 ms; keeping at least 1 keeps an interval of 0 from spinning forever.
    timers.set(id, { id, due: t + Math.max(1, ms), fn, every: every === undefined ? undefined : Math.max(1, every) });
    return handle(id);
  };
  const cancel = (h: TimerHandle | undefined): void => {
    const id = (h as { id?: unknown } | undefined)?.id;
    if (typeof id === "number") timers.delete(id);
  };
  // The earliest timer due at or before `until`; ties run in the order they were set.
  const nextDue = (until: number): ManualTimer | undefined => {
    let best: ManualTimer | undefined;
    for (const timer of timers.values()) {
      if (timer.due <= until && (!best || timer.due < best.due || (timer.due === best.due && timer.id < best.id)))
        best = timer;
    }
    return best;
  };
  const fire = (timer: ManualTimer): void => {
    t = Math.max(t, timer.due);
    if (timer.every === undefined) timers.delete(timer.id);
    else timer.due += timer.every;
    timer.fn();
  };
  const clock: ManualClock = {
    now: () => t,
    setTimeout: (fn, ms) => schedule(fn, ms),
    clearTimeout: cancel,
    setInterval: (fn, ms) => schedule(fn, ms, ms),
    clearInterval: cancel,
    sleep: (ms, signal) => sleepOn(clock, ms, signal),
    advance(ms) {
      const until = t + ms;
      for (let timer = nextDue(until); timer; timer = nextDue(until)) fire(timer);
      t = until;
    },
    async advanceAsync(ms) {
      const until = t + ms;
      await settle();
      for (let timer = nextDue(until); timer; timer = nextDue(until)) {
        fire(timer);
        await settle();
      }
      t = until;
    },
    set(ms) {
      if (ms > t) clock.advance(ms - t);
      else t = ms;
    },
    pendingTimers: () => timers.size,
  };
  return clock;
}

// A macrotask turn: every pending promise continuation (and the I/O polled meanwhile) has run.
const settle = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));
