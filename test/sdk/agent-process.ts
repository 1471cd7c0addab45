import type { ExecutionContext } from "ava";
import { spawnChild, waitFor, type Child } from "../helpers/processes.js";

/** A conformance agent process and the JSON lines it printed (contract: test/sdk/README.md). */
export interface AgentProcess {
  child: Child;
  /** Every JSON line printed on stdout so far. */
  lines(): Record<string, unknown>[];
  /** Lines of one event. */
  events(event: string): Record<string, unknown>[];
  /** Waits until `count` lines of `event` were printed; returns the last. */
  waitEvent(event: string, count?: number, timeoutMs?: number): Promise<Record<string, unknown>>;
  signal(sig: NodeJS.Signals): void;
}

/** How one SDK's conformance agent is started. */
export interface AgentLauncher {
  /** "typescript", "python", ... */
  language: string;
  /** Prepares once per test run (e.g. pack and install the SDK); returns the command to run. */
  prepare(
    t: ExecutionContext,
  ): Promise<{ command: string; args: string[]; env?: Record<string, string>; cwd?: string }>;
}

/** Starts the agent process with the contract's environment. */
export function startAgentProcess(
  t: ExecutionContext,
  launch: { command: string; args: string[]; env?: Record<string, string>; cwd?: string },
  env: Record<string, string>,
): AgentProcess {
  const child = spawnChild(t, launch.command, launch.args, { ...launch.env, ...env }, launch.cwd);
  let stdout = "";
  child.proc.stdout?.on("data", (d: Buffer) => (stdout += d.toString()));
  const lines = () =>
    stdout
      .split("\n")
      .filter((l) => l.startsWith("{"))
      .flatMap((l) => {
        try {
          return [JSON.parse(l) as Record<string, unknown>];
        } catch {
          return [];
        }
      });
  const events = (event: string) => lines().filter((l) => l.event === event);
  return {
    child,
    lines,
    events,
    async waitEvent(event, count = 1, timeoutMs = 30_000) {
      await waitFor(
        () => {
          if (child.proc.exitCode !== null && events(event).length < count)
            throw new Error(`agent exited (${child.proc.exitCode}): ${child.output().slice(-2000)}`);
          return events(event).length >= count;
        },
        `agent event ${event} x${count}`,
        timeoutMs,
      ).catch((e: Error) => {
        throw new Error(`${e.message}\n--- agent output ---\n${child.output().slice(-3000)}`);
      });
      return events(event)[count - 1]!;
    },
    signal(sig) {
      if (child.proc.pid) process.kill(child.proc.pid, sig);
    },
  };
}
