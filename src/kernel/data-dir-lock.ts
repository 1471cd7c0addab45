import { mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { ConfigError } from "../common/errors.js";
import { isRunning, parseProcessIdentity, processIdentity } from "../common/process-identity.js";

/** Held while a kernel owns a data directory: its database, development identity and leaf store. */
export interface DataDirLock {
  readonly path: string;
  /** True when the previous owner died without releasing the lock (a crash or kill -9). */
  readonly stale: boolean;
  release(): void;
}

/**
 * Takes `<dataDir>/kernel.lock`. A lock held by a running process refuses the start (two kernels
 * on one store would each start a leaf on the same JetStream directory); a lock left by a dead
 * process is taken over, and `stale` tells the caller to clean up after it.
 */
export function lockDataDir(dataDir: string): DataDirLock {
  mkdirSync(dataDir, { recursive: true, mode: 0o700 });
  const path = join(dataDir, "kernel.lock");
  const me = processIdentity();
  let stale = false;
  for (let attempt = 0; ; attempt++) {
    try {
      writeFileSync(path, JSON.stringify(me) + "\n", { flag: "wx", mode: 0o600 });
      break;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "EEXIST" || attempt > 0) throw err;
    }
    let owner;
    try {
      owner = parseProcessIdentity(readFileSync(path, "utf8"));
    } catch {
      owner = undefined;
    }
    if (owner && isRunning(owner)) {
      throw new ConfigError(`dataDir ${dataDir} is in use by another kernel (pid ${owner.pid}); stop it first`);
    }
    stale = true;
    rmSync(path, { force: true });
  }
  let released = false;
  return {
    path,
    stale,
    release() {
      if (released) return;
      released = true;
      const owner = (() => {
        try {
          return parseProcessIdentity(readFileSync(path, "utf8"));
        } catch {
          return undefined;
        }
      })();
      if (owner?.pid === me.pid && owner.start === me.start) rmSync(path, { force: true });
    },
  };
}
