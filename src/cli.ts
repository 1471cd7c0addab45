#!/usr/bin/env node
import { systemClock } from "./common/clock.js";
import { ConfigError } from "./common/errors.js";
import { createLogger } from "./telemetry/logger.js";
import { registerGrpcInstrumentation } from "./telemetry/register-instrumentation.js";
import { openDatabase } from "./store/database.js";
import { migrateDown, migrateUp, migrationStatus } from "./store/migrator.js";
import { MIGRATIONS } from "./store/migrations/index.js";
import { createAuditLog } from "./audit/audit-log.js";
import { startDgeServer } from "./dge/dge-server.js";
import { KERNEL_VERSION, loadKernelOptions, openKernelDatabase, startKernel, type Kernel } from "./kernel/index.js";
import { runPeersCommand } from "./kernel/peers-command.js";

const USAGE = `usage: nops-kernel <command> [--config <file>]

commands:
  serve                     start the kernel (embedded defaults: SQLite under ./data)
  migrate up|down|status    apply, revert (--steps N, default 1) or list schema migrations
  dge                       run the reference Data Governance Engine (dgeServer section)
  audit verify              check the hash chain of the audit log
  peers list|add|remove     the federation peer registry (flags: docs/federation.md, or peers help)
  version                   print the version

config: --config <file> (YAML or JSON) or NOPS_CONFIG; every option also as NOPS_<PATH>,
e.g. NOPS_GRPC_PORT=50051 NOPS_REGISTRY_HEARTBEAT_TTL_MS=15000 (see README.md).
`;

function flag(args: string[], name: string): string | undefined {
  const i = args.indexOf(name);
  if (i === -1) return undefined;
  const value = args[i + 1];
  if (value === undefined || value.startsWith("--")) throw new ConfigError(`${name} needs a value`);
  args.splice(i, 2);
  return value;
}

const out = (s: string) => process.stdout.write(s + "\n");
const err = (s: string) => process.stderr.write(`nops-kernel: ${s}\n`);

/** Resolves on the first SIGINT/SIGTERM; `onSecond` runs on the next one. */
function firstSignal(onSecond: (signal: NodeJS.Signals) => void): Promise<NodeJS.Signals> {
  return new Promise((resolve) => {
    let seen = false;
    const handler = (signal: NodeJS.Signals) => {
      if (seen) return onSecond(signal);
      seen = true;
      resolve(signal);
    };
    process.on("SIGINT", handler);
    process.on("SIGTERM", handler);
  });
}

/**
 * Runs the kernel until a signal. No exit path leaves a child (the supervised leaf nats-server)
 * behind: the first signal stops gracefully, a second one, an uncaught error or any other exit
 * stops children synchronously before the process ends. Only kill -9 skips all of this; the next
 * start then finds the stale leaf by its pid file and stops it.
 */
async function serve(configFile: string | undefined, env: Record<string, string | undefined>): Promise<number> {
  const running: { kernel?: Kernel } = {};
  const killChildren = () => running.kernel?.killChildren();
  process.on("exit", killChildren);
  const die = (reason: string, code: number) => {
    err(reason);
    killChildren();
    process.exit(code);
  };
  process.on("uncaughtException", (e) => die(`uncaught error: ${e.stack ?? e.message}`, 1));
  process.on("unhandledRejection", (e) =>
    die(`unhandled rejection: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}`, 1),
  );
  const signalled = firstSignal((signal) => die(`${signal} again: stopping now without draining`, 130));

  // Patches grpc-js before the server exists; disabled again when tracing is off.
  const grpcInstrumentation = registerGrpcInstrumentation();
  const starting = startKernel(loadKernelOptions(configFile, env), {
    grpcInstrumentation,
    searchPath: `${env.PATH ?? ""}:/usr/sbin`,
  });
  // A signal during the start waits for it to finish (or fail), then stops what it opened.
  const kernel = (running.kernel = await starting);
  await signalled;
  await kernel.stop();
  return 0;
}

/** The command line: reads argv and the environment (the only place that does). */
async function main(argv: string[], env: Record<string, string | undefined> = process.env): Promise<number> {
  const args = [...argv];
  try {
    const configFile = flag(args, "--config") ?? env.NOPS_CONFIG;
    const steps = flag(args, "--steps");
    // Federation peers take their own flags (docs/federation.md).
    if (args[0] === "peers") return runPeersCommand(args[1], args.slice(2), loadKernelOptions(configFile, env), out);
    const [command, sub, ...rest] = args;
    if (rest.length) throw new ConfigError(`unexpected argument ${rest[0]}`);
    switch (command) {
      case "version":
        out(KERNEL_VERSION);
        return 0;
      case "serve":
        return await serve(configFile, env);
      case "dge": {
        // The reference Data Governance Engine as its own process (what a newcomer or a test runs).
        const options = loadKernelOptions(configFile, env);
        if (!options.dgeServer)
          throw new ConfigError("dge needs a dgeServer section in the config file (at least dgeServer.keys)");
        const logger = createLogger(options.log);
        const server = await startDgeServer({ clock: systemClock, logger }, options.dgeServer);
        logger.info({ url: server.url }, "reference DGE listening");
        await firstSignal(() => process.exit(130));
        await server.close();
        return 0;
      }
      case "migrate": {
        const options = loadKernelOptions(configFile, env);
        const db = openDatabase({ path: options.databasePath });
        try {
          if (sub === "up") out(`applied: ${migrateUp(db, MIGRATIONS).join(", ") || "nothing (up to date)"}`);
          else if (sub === "down") {
            const n = steps === undefined ? 1 : Number(steps);
            if (!Number.isInteger(n) || n < 1)
              throw new ConfigError(`--steps must be a positive integer (got ${steps})`);
            out(`reverted: ${migrateDown(db, MIGRATIONS, n).join(", ") || "nothing (no migrations applied)"}`);
          } else if (sub === "status") {
            const s = migrationStatus(db, MIGRATIONS);
            out(`schema version ${s.current} of ${s.latest}`);
            for (const m of s.applied)
              out(`  applied  ${String(m.version).padStart(4, "0")} ${m.name}  ${new Date(m.appliedAt).toISOString()}`);
            for (const m of s.pending) out(`  pending  ${String(m.version).padStart(4, "0")} ${m.name}`);
          } else throw new ConfigError(`migrate needs up, down or status (got ${sub ?? "nothing"})`);
        } finally {
          db.close();
        }
        return 0;
      }
      case "audit": {
        if (sub !== "verify") throw new ConfigError(`audit needs verify (got ${sub ?? "nothing"})`);
        const options = loadKernelOptions(configFile, env);
        const db = openKernelDatabase(options);
        try {
          const result = createAuditLog(db, systemClock).verify();
          out(
            result.ok
              ? `audit log intact: ${result.checked} rows verified`
              : `audit log TAMPERED at row ${result.badSeq}: ${result.reason} (${result.checked} rows verified before it)`,
          );
          return result.ok ? 0 : 1;
        } finally {
          db.close();
        }
      }
      case undefined:
      case "help":
      case "--help":
        out(USAGE);
        return command === undefined ? 2 : 0;
      default:
        throw new ConfigError(`unknown command ${command}`);
    }
  } catch (e) {
    if (e instanceof ConfigError) {
      err(e.message);
      return 2;
    }
    throw e;
  }
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (e: unknown) => {
    err(e instanceof Error ? (e.stack ?? e.message) : String(e));
    process.exitCode = 1;
  },
);
