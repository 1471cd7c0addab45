import type { Clock } from "../common/index.js";

/** Limits retries to a fraction of requests over a sliding window, so failures cannot snowball into a retry storm. */
export interface RetryBudget {
  /** Records a first attempt (earns budget). */
  recordRequest(): void;
  /** Takes one retry from the budget; false when none is left. */
  tryRetry(): boolean;
  /** Requests and retries counted in the current window. */
  snapshot(): { requests: number; retries: number; allowed: number };
}

/** Options of the budget (see RetryOptions). */
export interface RetryBudgetOptions {
  ratio: number;
  minPerSecond: number;
  windowMs: number;
}

// Counts are kept in ten buckets across the window: cheap, and close enough to a true sliding window.
const BUCKETS = 10;

/** Creates a budget allowing `minPerSecond × window + ratio × requests` retries per window. */
export function createRetryBudget(clock: Clock, options: RetryBudgetOptions): RetryBudget {
  const bucketMs = options.windowMs / BUCKETS;
  const requests = new Array<number>(BUCKETS).fill(0);
  const retries = new Array<number>(BUCKETS).fill(0);
  let current = Math.floor(clock.now() / bucketMs);
  const advance = (): number => {
    const b = Math.floor(clock.now() / bucketMs);
    for (let i = current + 1; i <= Math.min(b, current + BUCKETS); i++) {
      requests[i % BUCKETS] = 0;
      retries[i % BUCKETS] = 0;
    }
    if (b > current) current = b;
    return current % BUCKETS;
  };
  const sum = (a: number[]): number => a.reduce((x, y) => x + y, 0);
  const allowed = (): number =>
    Math.floor(options.minPerSecond * (options.windowMs / 1000) + options.ratio * sum(requests));
  return {
    recordRequest() {
      requests[advance()]! += 1;
    },
    tryRetry() {
      const i = advance();
      if (sum(retries) + 1 > allowed()) return false;
      retries[i]! += 1;
      return true;
    },
    snapshot() {
      advance();
      return { requests: sum(requests), retries: sum(retries), allowed: allowed() };
    },
  };
}
