import { startOnFreePorts } from "./processes.js";
import { spawn, type ChildProcess } from "node:child_process";
import { createInterface } from "node:readline";

/** A redis-server started for one test. */
export interface RedisServer {
  port: number;
  pid: number;
  /** SIGKILLs the server (idempotent) and waits for it to exit. */
  kill(): Promise<void>;
}

/** Starts `redis-server` on a free loopback port with persistence off; waits (bounded) until it accepts connections. */
export async function startRedisServer(onPort?: number): Promise<RedisServer> {
  if (onPort !== undefined) return startOn(onPort);
  return startOnFreePorts(1, ([port]) => startOn(port!));
}

async function startOn(port: number): Promise<RedisServer> {
  const child: ChildProcess = spawn(
    "redis-server",
    ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
    {
      stdio: ["ignore", "pipe", "inherit"],
    },
  );
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  const kill = async (): Promise<void> => {
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
    await exited;
  };
  try {
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error("redis-server did not start within 15 s")), 15_000);
      child.once("exit", (code) => reject(new Error(`redis-server exited with ${code}`)));
      createInterface({ input: child.stdout! }).on("line", (line) => {
        if (line.includes("Ready to accept connections")) {
          clearTimeout(timer);
          resolve();
        }
      });
    });
  } catch (e) {
    await kill();
    throw e;
  }
  return { port, pid: child.pid!, kill };
}
