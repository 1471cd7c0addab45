import { spawn, type ChildProcess } from "node:child_process";
import { accessSync, constants, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { connect as netConnect } from "node:net";
import { delimiter, join } from "node:path";
import { ConfigError, KernelError } from "../common/index.js";
import type { Logger } from "../telemetry/index.js";
import { isRunning, parseProcessIdentity, processIdentity } from "../common/index.js";
import { renderLeafConfig } from "./nats-config.js";

/** Options of the development leaf node the kernel runs itself. */
export interface LeafSupervisorOptions {
  /** Absolute path of nats-server (see findNatsServer). Required. */
  binary: string;
  /** Kernel data dir; the config goes to <dataDir>/nats/leaf.conf, JetStream to <dataDir>/nats/jetstream. Required. */
  dataDir: string;
  /** Client port on 127.0.0.1. @default 4222 */
  port: number;
  /** JetStream domain of this edge. Required. */
  edgeDomain: string;
  /** The kernel's user in the KERNEL account. @default "kernel" */
  user: string;
  /** Its password. Required. */
  password: string;
  /** Leafnode remote URL of the hub (credentials included); omitted = standalone leaf. @default undefined */
  hubUrl?: string;
  /** First restart delay after the server dies; doubles up to maxRestartDelayMs. @default 200 */
  restartDelayMs: number;
  /** @default 5000 */
  maxRestartDelayMs: number;
  /** How long start() waits for the port. @default 15000 */
  startTimeoutMs: number;
}

/** @see LeafSupervisorOptions.port */
export const DEFAULT_LEAF_PORT = 4222;
/** @see LeafSupervisorOptions.user */
export const DEFAULT_LEAF_USER = "kernel";
/** @see LeafSupervisorOptions.restartDelayMs */
export const DEFAULT_LEAF_RESTART_DELAY_MS = 200;
/** @see LeafSupervisorOptions.maxRestartDelayMs */
export const DEFAULT_LEAF_MAX_RESTART_DELAY_MS = 5000;
/** @see LeafSupervisorOptions.startTimeoutMs */
export const DEFAULT_LEAF_START_TIMEOUT_MS = 15_000;

/** Validates and fills defaults; throws ConfigError naming `<path>.<field>`. */
export function resolveLeafSupervisorOptions(
  input: Partial<LeafSupervisorOptions>,
  path = "events.leaf",
): LeafSupervisorOptions {
  const req = (field: "binary" | "dataDir" | "edgeDomain" | "password"): string => {
    const v = input[field];
    if (typeof v !== "string" || v === "") throw new ConfigError(`${path}.${field} is required`);
    return v;
  };
  const int = (
    field: "port" | "restartDelayMs" | "maxRestartDelayMs" | "startTimeoutMs",
    fallback: number,
    min: number,
    max = Number.MAX_SAFE_INTEGER,
  ): number => {
    const v = input[field] ?? fallback;
    if (!Number.isInteger(v) || v < min || v > max)
      throw new ConfigError(`${path}.${field} must be an integer in [${min}, ${max}]`);
    return v;
  };
  return {
    binary: req("binary"),
    dataDir: req("dataDir"),
    edgeDomain: req("edgeDomain"),
    password: req("password"),
    user: input.user ?? DEFAULT_LEAF_USER,
    hubUrl: input.hubUrl,
    port: int("port", DEFAULT_LEAF_PORT, 1, 65535),
    restartDelayMs: int("restartDelayMs", DEFAULT_LEAF_RESTART_DELAY_MS, 1),
    maxRestartDelayMs: int("maxRestartDelayMs", DEFAULT_LEAF_MAX_RESTART_DELAY_MS, 1),
    startTimeoutMs: int("startTimeoutMs", DEFAULT_LEAF_START_TIMEOUT_MS, 1),
  };
}

/** Finds nats-server on a PATH string (the CLI passes $PATH through the kernel); undefined when absent. */
export function findNatsServer(pathVariable: string | undefined): string | undefined {
  for (const dir of (pathVariable ?? "").split(delimiter)) {
    if (dir === "") continue;
    const candidate = join(dir, "nats-server");
    try {
      accessSync(candidate, constants.X_OK);
      return candidate;
    } catch {
      // not in this directory
    }
  }
  return undefined;
}

/** A nats-server leaf node the kernel started and keeps alive (development only; production uses the sidecar). */
export interface LeafSupervisor {
  readonly url: string;
  /** Writes the config, starts the server and waits until it accepts connections. */
  start(): Promise<void>;
  /** Stops the server (SIGTERM, then SIGKILL) and stops restarting it. */
  stop(): Promise<void>;
  /** Synchronous last resort for exit paths that cannot wait: SIGTERM now, no restart. */
  kill(): void;
  /** The running server's pid. */
  pid(): number | undefined;
}

// A leaf left running by a kernel that was killed (kill -9 skips every exit handler) still holds
// the JetStream store; a second server on the same store directory would corrupt it.
async function stopStaleLeaf(pidFile: string, logger: Logger): Promise<void> {
  let stale;
  try {
    stale = parseProcessIdentity(readFileSync(pidFile, "utf8"));
  } catch {
    return;
  }
  if (stale && isRunning(stale)) {
    logger.warn({ pid: stale.pid }, "stopping a leaf nats-server left running by a previous kernel");
    process.kill(stale.pid, "SIGTERM");
    const deadline = Date.now() + 5000;
    while (isRunning(stale)) {
      if (Date.now() > deadline) {
        process.kill(stale.pid, "SIGKILL");
        break;
      }
      await new Promise((r) => setTimeout(r, 50));
    }
    while (isRunning(stale)) await new Promise((r) => setTimeout(r, 20));
  }
  rmSync(pidFile, { force: true });
}

function portOpen(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = netConnect({ host: "127.0.0.1", port });
    s.once("connect", () => {
      s.destroy();
      resolve(true);
    });
    s.once("error", () => resolve(false));
  });
}

/** Creates the supervisor. */
export function createLeafSupervisor(
  deps: {
    logger: Logger;
    /**
     * Receives every line the server logs (with debug lines, `-D`): the kernel counts the hub
     * link's refused publishes from them (createLeafLog). Absent: the log is only kept for crash reports.
     */
    onLogLine?: (line: string) => void;
  },
  options: LeafSupervisorOptions,
): LeafSupervisor {
  const { logger } = deps;
  const dir = join(options.dataDir, "nats");
  const configPath = join(dir, "leaf.conf");
  const pidFile = join(dir, "leaf.pid");
  let child: ChildProcess | undefined;
  let wanted = false;
  let delay = options.restartDelayMs;
  let restartTimer: NodeJS.Timeout | undefined;

  const launch = (): void => {
    const args = deps.onLogLine ? ["-c", configPath, "-D"] : ["-c", configPath];
    const c = spawn(options.binary, args, { stdio: ["ignore", "ignore", "pipe"] });
    child = c;
    if (c.pid) writeFileSync(pidFile, JSON.stringify(processIdentity(c.pid)) + "\n", { mode: 0o600 });
    let tail = "";
    let partial = "";
    c.stderr?.setEncoding("utf8");
    c.stderr?.on("data", (text: string) => {
      tail = (tail + text).slice(-2000);
      if (!deps.onLogLine) return;
      const lines = (partial + text).split("\n");
      // A line never ends only if something is wrong with the stream: do not buffer it without bound.
      partial = (lines.pop() ?? "").slice(-65_536);
      for (const line of lines) if (line !== "") deps.onLogLine(line);
    });
    c.once("error", (err) => logger.error({ err }, "leaf nats-server failed to start"));
    c.once("exit", (code, signal) => {
      if (child === c) {
        child = undefined;
        rmSync(pidFile, { force: true });
      }
      if (!wanted) return;
      logger.warn({ code, signal, stderr: tail, restartInMs: delay }, "leaf nats-server exited; restarting");
      restartTimer = setTimeout(launch, delay);
      delay = Math.min(delay * 2, options.maxRestartDelayMs);
    });
    // A server that stays up resets the backoff.
    setTimeout(() => {
      if (child === c) delay = options.restartDelayMs;
    }, options.maxRestartDelayMs).unref();
  };

  return {
    url: `nats://127.0.0.1:${options.port}`,
    async start() {
      mkdirSync(join(dir, "jetstream"), { recursive: true, mode: 0o700 });
      await stopStaleLeaf(pidFile, logger);
      writeFileSync(
        configPath,
        renderLeafConfig({
          serverName: `leaf-${options.edgeDomain}`,
          port: options.port,
          domain: options.edgeDomain,
          storeDir: join(dir, "jetstream"),
          user: options.user,
          password: options.password,
          hubUrl: options.hubUrl,
        }),
        { mode: 0o600 },
      );
      wanted = true;
      launch();
      const deadline = Date.now() + options.startTimeoutMs;
      while (!(await portOpen(options.port))) {
        if (Date.now() > deadline)
          throw new KernelError(
            `leaf nats-server did not listen on ${options.port} within ${options.startTimeoutMs} ms`,
          );
        await new Promise((r) => setTimeout(r, 50));
      }
      logger.info({ pid: child?.pid, port: options.port, domain: options.edgeDomain }, "leaf nats-server running");
    },
    async stop() {
      wanted = false;
      if (restartTimer) clearTimeout(restartTimer);
      const c = child;
      if (!c || c.exitCode !== null || c.signalCode !== null) return;
      const exited = new Promise<void>((r) => c.once("exit", () => r()));
      c.kill("SIGTERM");
      const timer = setTimeout(() => c.kill("SIGKILL"), 10_000);
      await exited;
      clearTimeout(timer);
    },
    kill() {
      wanted = false;
      if (restartTimer) clearTimeout(restartTimer);
      if (child && child.exitCode === null && child.signalCode === null) child.kill("SIGTERM");
    },
    pid: () => child?.pid,
  };
}
