import { spawn, type ChildProcess } from "node:child_process";
import { createServer } from "node:net";
import type { ExecutionContext } from "ava";

/** A port that was free a moment ago (for child processes that must be told their port). */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolve(port));
    });
  });
}

/**
 * Starts something that must be told its ports up front (nats-server, redis-server cannot bind
 * port 0 and report it): picks `count` distinct free ports and calls `start`; if another process
 * took a port between the pick and the bind, `start` fails and is tried again on fresh ports.
 */
export async function startOnFreePorts<T>(
  count: number,
  start: (ports: number[]) => Promise<T>,
  attempts = 3,
): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    const ports = new Set<number>();
    while (ports.size < count) ports.add(await freePort());
    try {
      return await start([...ports]);
    } catch (err) {
      if (attempt >= attempts) throw err;
    }
  }
}

/** Polls `check` (a throw counts as "not yet") until it returns true or `timeoutMs` passes. */
export async function waitFor(
  check: () => boolean | Promise<boolean>,
  what: string,
  timeoutMs = 30_000,
  stepMs = 50,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      if (await check()) return;
    } catch {
      // not yet
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, stepMs));
  }
}

/** A child process whose output is captured; killed by pid in the test's teardown. */
export interface Child {
  proc: ChildProcess;
  output(): string;
  exited: Promise<number | null>;
}

/** Spawns a process for a test and SIGKILLs it by pid at teardown if it is still running. */
export function spawnChild(
  t: ExecutionContext,
  command: string,
  args: string[],
  env: Record<string, string>,
  cwd?: string,
): Child {
  const proc = spawn(command, args, { env: { ...process.env, ...env }, cwd, stdio: ["ignore", "pipe", "pipe"] });
  let out = "";
  proc.stdout?.on("data", (d: Buffer) => (out += d.toString()));
  proc.stderr?.on("data", (d: Buffer) => (out += d.toString()));
  const exited = new Promise<number | null>((resolve) => proc.once("exit", (code) => resolve(code)));
  t.teardown(() => {
    if (proc.exitCode === null && proc.signalCode === null && proc.pid) process.kill(proc.pid, "SIGKILL");
  });
  return { proc, output: () => out, exited };
}
