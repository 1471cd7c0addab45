import type { Db } from "./database.js";

/**
 * Runs a state change and the event that reports it as one unit: both commit or neither does.
 * Nested calls are savepoints (an inner failure rolls back only the inner work). The function
 * must be synchronous: a transaction never spans an await (better-sqlite3 rejects a promise).
 */
export interface Transactor {
  transaction<T>(fn: () => T): T;
}

/** The SQLite transactor: `db.transaction(fn)()`, made per call so tracing wraps it (trace-database-transactions). */
export function createSqliteTransactor(db: Db): Transactor {
  return { transaction: (fn) => db.transaction(fn)() };
}

/** A transactor for in-memory stores: they register how to undo each change, run in reverse on a throw. */
export interface InMemoryTransactor extends Transactor {
  /** Records how to undo a change made inside the current transaction; outside any transaction it is dropped. */
  onRollback(undo: () => void): void;
}

/** Creates the in-memory transactor (unit tests and stores with no database). */
export function createInMemoryTransactor(): InMemoryTransactor {
  const frames: (() => void)[][] = [];
  return {
    transaction(fn) {
      const frame: (() => void)[] = [];
      frames.push(frame);
      let result;
      try {
        result = fn();
        if (typeof (result as { then?: unknown } | undefined)?.then === "function") {
          // Same refusal as better-sqlite3, so a test on this transactor cannot pass code SQLite rejects.
          throw new TypeError("Transaction function cannot return a promise");
        }
      } catch (err) {
        frames.pop();
        for (const undo of frame.reverse()) undo();
        throw err;
      }
      frames.pop();
      // A committed savepoint still rolls back with its enclosing transaction.
      frames.at(-1)?.push(...frame);
      return result;
    },
    onRollback(undo) {
      frames.at(-1)?.push(undo);
    },
  };
}
