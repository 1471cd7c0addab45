import { SpanKind, SpanStatusCode, trace, type Tracer } from "@opentelemetry/api";
import type { Db } from "../store/index.js";

type AnyFn = (...args: never[]) => unknown;
const VARIANTS = ["default", "deferred", "immediate", "exclusive"] as const;

/**
 * Makes every `db.transaction(fn)` created from now on run inside a `sqlite.transaction` span
 * when a trace is active (a call's handler); background transactions outside any trace stay
 * span-free so they cost nothing. Call it right after opening the database, before components
 * prepare their transactions. Returns a function that restores the original method.
 */
export function traceDatabaseTransactions(db: Db, tracer: Tracer): () => void {
  // eslint-disable-next-line @typescript-eslint/unbound-method -- restored onto the same object, called with db as this
  const original = db.transaction;
  const traced = <F extends AnyFn>(fn: F): ReturnType<Db["transaction"]> => {
    const txn = original.call(db, fn as never);
    const wrap = (run: (...args: never[]) => unknown) =>
      function (this: unknown, ...args: never[]): unknown {
        if (!trace.getActiveSpan()) return run.apply(this, args);
        return tracer.startActiveSpan(
          "sqlite.transaction",
          { kind: SpanKind.INTERNAL, attributes: { "db.system.name": "sqlite" } },
          (span) => {
            try {
              return run.apply(this, args);
            } catch (err) {
              span.setStatus({ code: SpanStatusCode.ERROR, message: err instanceof Error ? err.name : "error" });
              if (err instanceof Error) span.recordException(err);
              throw err;
            } finally {
              span.end();
            }
          },
        );
      };
    // better-sqlite3's variants ignore `this` (they close over the database); wrap calls them with it anyway.
    // eslint-disable-next-line @typescript-eslint/unbound-method
    const wrapped = Object.assign(wrap(txn), Object.fromEntries(VARIANTS.map((v) => [v, wrap(txn[v])])));
    return wrapped as unknown as ReturnType<Db["transaction"]>;
  };
  db.transaction = traced as Db["transaction"];
  return () => {
    db.transaction = original;
  };
}
