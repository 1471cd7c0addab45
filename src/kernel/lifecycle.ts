import type { Logger } from "../telemetry/logger.js";

/** What the kernel opened, closed newest first on any failure or stop. */
export interface Lifecycle {
  /**
   * Registers `close` for something just opened. `kill`, when given, is a synchronous last resort
   * run by `killNow()` on paths that cannot wait (second signal, uncaught error, process exit).
   */
  defer(name: string, close: () => unknown, kill?: () => void): void;
  /** Runs every closer in reverse order of registration, each once; a failing closer is logged, not fatal. */
  close(): Promise<void>;
  /** Runs every `kill` synchronously (children must never outlive the kernel). */
  killNow(): void;
}

interface Entry {
  name: string;
  close: () => unknown;
  kill?: () => void;
}

/** Creates an empty lifecycle. */
export function createLifecycle(logger: Logger): Lifecycle {
  const entries: Entry[] = [];
  let closing: Promise<void> | undefined;
  return {
    defer(name, close, kill) {
      if (closing) throw new Error(`lifecycle is closing; cannot open ${name}`);
      entries.push({ name, close, kill });
    },
    close: () =>
      (closing ??= (async () => {
        for (const entry of entries.reverse()) {
          try {
            await entry.close();
          } catch (err) {
            logger.warn({ err, resource: entry.name }, "closing failed");
          }
        }
      })()),
    killNow() {
      for (const entry of [...entries].reverse()) {
        try {
          entry.kill?.();
        } catch {
          // a child that is already gone
        }
      }
    },
  };
}
