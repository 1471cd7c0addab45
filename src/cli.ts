#!/usr/bin/env -S node --max-semi-space-size=8 --expose-gc
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { hostname } from "node:os";
import { dirname, join } from "node:path";
import { parse as parseYaml } from "yaml";
import { systemClock } from "./common/clock.js";
import { ConfigError } from "./common/errors.js";
import { createLogger } from "./telemetry/logger.js";
import { registerGrpcInstrumentation } from "./telemetry/register-instrumentation.js";
import { openDatabase } from "./store/database.js";
import { migrateDown, migrateUp, migrationStatus } from "./store/migrator.js";
import { MIGRATIONS } from "./store/migrations/index.js";
import { createAuditLog } from "./audit/audit-log.js";
import {
  type DsseEnvelope,
  createBundle,
  installBundle,
  kernelRoot,
  resolveReleaseOptions,
  signKeyRotation,
  RELEASE_FILES,
  sha256Hex,
  signImage,
  signRelease,
  verifyBundle,
  verifyImage,
  verifyRelease,
} from "./release/index.js";
import { openCheckpoint, type SignedCheckpoint } from "./audit/checkpoint.js";
import {
  encodeVerifierKey,
  fileVerifierKeys,
  openFileSigner,
  parseVerifierKey,
  rotateFileSigner,
  verifierKeyOf,
  type VerifierKey,
} from "./audit/signer.js";
import { resolveWitnessOptions, startWitness } from "./witness/index.js";
import { loadRawConfig } from "./kernel/load-config.js";
import { startDgeServer } from "../packages/reference-dge/src/index.js";
// The MCP modules one by one, not the barrel: `serve` loads the MCP SDK only when /mcp is first called.
import { createToolPolicies } from "./mcp/tool-policies.js";
import { principalFrom, readPolicyCases, runPolicyCases, type PolicyCase } from "./mcp/policy-test.js";
import { KERNEL_VERSION, loadKernelOptions, openKernelDatabase, startKernel, type Kernel } from "./kernel/index.js";
import { runPeersCommand } from "./kernel/peers-command.js";
import { runHubCommand } from "./kernel/hub-command.js";

const USAGE = `usage: nops-kernel <command> [--config <file>]

commands:
  serve                     start the kernel (embedded defaults: SQLite under ./data)
  migrate up|down|status    apply, revert (--steps N, default 1) or list schema migrations
  dge                       run the reference Data Governance Engine (dgeServer section)
  release sign --key <file> [--key-name <name>] [--out <dir>] [--builder <id>]
                            sign this kernel's release: manifest, SBOM, SLSA provenance (DSSE)
  release verify [--dir <dir>] [--trusted-key <key>]...
                            verify a release against the files here (keys: release.trustedKeys)
  release rotate-key --key <old file> --new-key <new file> [--key-name <name>] --out <file>
                            sign, offline with the old key, the statement that trusts the new one
  release sign-image --key <file> --image <name> --digest sha256:<hex> --out <file> [--dir <dir>]
                            sign a container image by its config digest (binds the release in --dir)
  release verify-image --signature <file> --digest sha256:<hex> --trusted-key <key>...
                            check an image signature against the image's config digest
  bundle create --key <file> --out <dir> [--dir <release dir>] [--rotation <file>]...
                            an offline bundle of this kernel (sign its release first)
  bundle verify|install --dir <bundle> [--target <dir>] --trusted-key <key>...
                            check a bundle, or install it without network into --target
  audit verify [--checkpoint <file|url>] [--key <verifier key|file>]
                            check the audit log (hash chain and Merkle tree) against a checkpoint
                            held outside the edge, e.g. the hub witness's (docs/audit.md)
  audit key [--rotate]      print the checkpoint verifier keys to pin at the witness; --rotate
                            replaces the key, keeping the old one verifiable
  audit witness             run the hub-side witness (witness section of the config file)
  policy test --cases <f>   run MCP tool policy test cases (YAML or JSON list) against mcp.policies
  policy test --tool <t> --principal <json> --args <json>
                            evaluate mcp.policies for one call and print the decision
  peers list|add|remove     the federation peer registry (flags: docs/federation.md, or peers help)
  hub add-edge|revoke-edge|list-edges
                            the hub's per-edge leafnode users (flags: hub help, docs/events.md)
  hub set-dge-policy|clear-dge-policy
                            send an edge a DGE policy through the hub (flags: hub help)
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

/** Every value of a repeatable flag, taken out of `args`. */
function flags(args: string[], name: string): string[] {
  const values: string[] = [];
  for (let v = flag(args, name); v !== undefined; v = flag(args, name)) values.push(v);
  return values;
}

/** The flags of `release` and `bundle`, taken out of `args`. */
function releaseFlags(args: string[]) {
  const trustedKeys = flags(args, "--trusted-key");
  return {
    rotations: flags(args, "--rotation"),
    newKey: flag(args, "--new-key"),
    target: flag(args, "--target"),
    key: flag(args, "--key"),
    keyName: flag(args, "--key-name") ?? "nops-kernel-release",
    out: flag(args, "--out"),
    builder: flag(args, "--builder"),
    dir: flag(args, "--dir"),
    image: flag(args, "--image"),
    digest: flag(args, "--digest"),
    signature: flag(args, "--signature"),
    trustedKeys,
  };
}

function bool(args: string[], name: string): boolean {
  const i = args.indexOf(name);
  if (i !== -1) args.splice(i, 1);
  return i !== -1;
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

/** Reads a signed checkpoint from a file, or from a URL (a witness's base URL gets /v1/checkpoints/<edge>). */
async function readCheckpointSource(source: string, edgeId: string): Promise<string> {
  if (!/^https?:\/\//.test(source)) return readFileSync(source, "utf8");
  const url = new URL(source);
  if (url.pathname === "/" || url.pathname === "") url.pathname = `/v1/checkpoints/${edgeId}`;
  const res = await fetch(url, { signal: AbortSignal.timeout(15_000) });
  if (!res.ok) throw new ConfigError(`${url.href} answered ${res.status}: ${(await res.text()).trim()}`);
  return res.text();
}

/** Verifier keys from --key (a key, or a file of keys one a line), else the key file's current and retired keys. */
function verifierKeys(key: string | undefined, keyFile: string, origin: string): VerifierKey[] {
  if (key === undefined) return fileVerifierKeys({ path: keyFile, name: origin }).map((k) => parseVerifierKey(k));
  const text = existsSync(key) ? readFileSync(key, "utf8") : key;
  return text
    .split("\n")
    .filter((l) => l.trim())
    .map((l) => parseVerifierKey(l));
}

/** `nops-kernel audit verify | key | witness`. */
async function auditCommand(
  sub: string | undefined,
  configFile: string | undefined,
  env: Record<string, string | undefined>,
  flags: { checkpoint?: string; key?: string; rotate: boolean },
): Promise<number> {
  if (sub === "witness") {
    const raw = loadRawConfig({ file: configFile, env: {}, defaults: {} });
    if (raw.witness === undefined) throw new ConfigError("audit witness needs a witness section in the config file");
    const options = resolveWitnessOptions(raw.witness, "witness");
    const logger = createLogger({ level: "info", redactPaths: [] });
    const running = await startWitness(options, { logger });
    logger.info({ url: running.url, edges: Object.keys(options.edges) }, "audit witness listening");
    await firstSignal(() => process.exit(130));
    await running.close();
    return 0;
  }
  const options = loadKernelOptions(configFile, env);
  const signerFile = { path: options.audit.keyFile, name: options.audit.origin, forbiddenDir: options.dataDir };
  if (sub === "key") {
    if (flags.rotate) {
      const { current, retired } = rotateFileSigner(signerFile);
      out(`rotated: new key ${current}\nretired (still verifies older checkpoints): ${retired}`);
    } else {
      // Creates the key as the first start would, so it can be pinned at the witness beforehand.
      mkdirSync(dirname(signerFile.path), { recursive: true, mode: 0o700 });
      openFileSigner(signerFile);
      for (const k of fileVerifierKeys(signerFile)) out(k);
    }
    return 0;
  }
  if (sub !== "verify") throw new ConfigError(`audit needs verify, key or witness (got ${sub ?? "nothing"})`);
  const db = openKernelDatabase(options);
  try {
    const audit = createAuditLog(db, systemClock);
    let checkpoint: SignedCheckpoint | undefined;
    let where = "";
    if (flags.checkpoint !== undefined) {
      const keys = verifierKeys(flags.key, options.audit.keyFile, options.audit.origin);
      try {
        checkpoint = openCheckpoint(
          await readCheckpointSource(flags.checkpoint, options.edgeId),
          keys,
          options.audit.origin,
        );
      } catch (e) {
        err(`the checkpoint from ${flags.checkpoint} cannot be used: ${(e as Error).message}`);
        return 2;
      }
      where = `the checkpoint from ${flags.checkpoint}`;
    }
    const result = audit.verify(checkpoint);
    if (!result.ok) {
      out(`audit log TAMPERED at row ${result.badSeq}: ${result.reason} (${result.checked} rows verified before it)`);
      return 1;
    }
    out(
      checkpoint
        ? `audit log intact: ${result.checked} rows verified, consistent with ${where} (tree size ${checkpoint.size})`
        : `audit log intact: ${result.checked} rows verified (no checkpoint held outside the edge given: ` +
            `a truncated or fully re-hashed log is detected only with --checkpoint)`,
    );
    return 0;
  } finally {
    db.close();
  }
}

/** The command line: reads argv and the environment (the only place that does). */
async function main(argv: string[], env: Record<string, string | undefined> = process.env): Promise<number> {
  const args = [...argv];
  try {
    const configFile = flag(args, "--config") ?? env.NOPS_CONFIG;
    const steps = flag(args, "--steps");
    // Federation peers take their own flags (docs/federation.md).
    if (args[0] === "peers") return runPeersCommand(args[1], args.slice(2), loadKernelOptions(configFile, env), out);
    if (args[0] === "hub") return await runHubCommand(args[1], args.slice(2), out);
    const release = args[0] === "release" || args[0] === "bundle" ? releaseFlags(args) : undefined;
    const auditFlags = {
      checkpoint: flag(args, "--checkpoint"),
      key: flag(args, "--key"),
      rotate: bool(args, "--rotate"),
    };
    const policyFlags = {
      cases: flag(args, "--cases"),
      tool: flag(args, "--tool"),
      principal: flag(args, "--principal"),
      args: flag(args, "--args"),
    };
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
      case "audit":
        return await auditCommand(sub, configFile, env, auditFlags);
      case "release": {
        const root = kernelRoot();
        const f = release!;
        if (sub === "sign") {
          if (!f.key) throw new ConfigError("release sign needs --key <file> (created 0600 when missing)");
          const signer = openFileSigner({ path: f.key, name: f.keyName });
          const outDir = f.out ?? join(root, "release");
          const { statement } = await signRelease({
            root,
            outDir,
            signer,
            kernelVersion: KERNEL_VERSION,
            builderId: f.builder ?? `local:${hostname()}`,
          });
          const commit = statement.predicate.buildDefinition.externalParameters.source.digest.gitCommit;
          out(`release signed into ${outDir} (commit ${commit})`);
          out(`verifier key: ${encodeVerifierKey(signer.name, signer.publicKey)}`);
          return 0;
        }
        if (sub === "rotate-key") {
          if (!f.key || !f.newKey || !f.out)
            throw new ConfigError("release rotate-key needs --key <old file>, --new-key <new file> and --out <file>");
          const previous = openFileSigner({ path: f.key, name: f.keyName, create: false });
          const next = openFileSigner({ path: f.newKey, name: f.keyName });
          const rotation = await signKeyRotation(previous, verifierKeyOf(next));
          writeFileSync(f.out, JSON.stringify(rotation) + "\n");
          out(`rotation to ${encodeVerifierKey(next.name, next.publicKey)} signed into ${f.out}`);
          return 0;
        }
        if (sub === "sign-image") {
          if (!f.key || !f.image || !f.digest || !f.out)
            throw new ConfigError(
              "release sign-image needs --key <file>, --image <name>, --digest sha256:<hex> and --out <file>",
            );
          const attestation = join(f.dir ?? join(root, "release"), RELEASE_FILES.attestation);
          if (!existsSync(attestation)) throw new ConfigError(`${attestation} is missing: run release sign first`);
          const signer = openFileSigner({ path: f.key, name: f.keyName, create: false });
          const envelope = await signImage({
            name: f.image,
            configDigest: f.digest,
            kernelVersion: KERNEL_VERSION,
            releaseAttestationSha256: sha256Hex(readFileSync(attestation)),
            builderId: f.builder ?? `local:${hostname()}`,
            signer,
          });
          writeFileSync(f.out, JSON.stringify(envelope, null, 1) + "\n");
          out(`image ${f.image} (${f.digest}) signed into ${f.out}`);
          return 0;
        }
        if (sub === "verify-image") {
          if (!f.signature || !f.digest || f.trustedKeys.length === 0)
            throw new ConfigError(
              "release verify-image needs --signature <file>, --digest sha256:<hex> and --trusted-key <key>",
            );
          const trusted = resolveReleaseOptions({ trustedKeys: f.trustedKeys }).trustedKeys;
          const envelope = JSON.parse(readFileSync(f.signature, "utf8")) as DsseEnvelope;
          const { statement, signedBy } = verifyImage(envelope, f.digest, trusted);
          out(`image verified: ${statement.subject[0].name} (${f.digest}), signed by ${signedBy}`);
          return 0;
        }
        if (sub !== "verify")
          throw new ConfigError(
            `release needs sign, verify, rotate-key, sign-image or verify-image (got ${sub ?? "nothing"})`,
          );
        const configured = f.trustedKeys.length
          ? resolveReleaseOptions({ trustedKeys: f.trustedKeys })
          : loadKernelOptions(configFile, env).release;
        if (configured.trustedKeys.length === 0)
          throw new ConfigError("release verify needs --trusted-key <key> or release.trustedKeys in the config");
        const result = verifyRelease(configured.root, f.dir ?? configured.dir, configured.trustedKeys);
        if (result.ok)
          out(`release verified: ${result.files} files, signed by ${result.signedBy}, commit ${result.sourceCommit}`);
        else {
          out(`release verification FAILED (${result.problems.length} problems):`);
          for (const p of result.problems.slice(0, 50)) out(`  ${p}`);
        }
        return result.ok ? 0 : 1;
      }
      case "bundle": {
        const f = release!;
        if (sub === "create") {
          if (!f.key || !f.out) throw new ConfigError("bundle create needs --key <file> and --out <dir>");
          await createBundle({
            root: kernelRoot(),
            ...(f.dir ? { releaseDir: f.dir } : {}),
            out: f.out,
            signer: openFileSigner({ path: f.key, name: f.keyName, create: false }),
            kernelVersion: KERNEL_VERSION,
            rotations: f.rotations.map((file) => JSON.parse(readFileSync(file, "utf8")) as DsseEnvelope),
          });
          out(`bundle written to ${f.out}`);
          return 0;
        }
        if (sub !== "verify" && sub !== "install")
          throw new ConfigError(`bundle needs create, verify or install (got ${sub ?? "nothing"})`);
        if (!f.dir) throw new ConfigError(`bundle ${sub} needs --dir <bundle directory>`);
        if (f.trustedKeys.length === 0) throw new ConfigError(`bundle ${sub} needs --trusted-key <key>`);
        const trusted = resolveReleaseOptions({ trustedKeys: f.trustedKeys }).trustedKeys;
        if (sub === "verify") {
          const { index } = verifyBundle(f.dir, trusted);
          out(`bundle verified: kernel ${index.kernelVersion}, archive ${index.archive.sha256}`);
          return 0;
        }
        if (!f.target) throw new ConfigError("bundle install needs --target <dir>");
        const { files } = installBundle(f.dir, f.target, trusted);
        out(
          `installed into ${f.target} (${files} files verified); merge ${join(f.target, "release.yaml")} into its config`,
        );
        return 0;
      }
      case "policy": {
        if (sub !== "test") throw new ConfigError(`policy needs test (got ${sub ?? "nothing"})`);
        // Loading the options validates every policy (parse, variables) exactly as serve does.
        const policies = createToolPolicies(loadKernelOptions(configFile, env).mcp.policies);
        let cases: PolicyCase[];
        if (policyFlags.cases !== undefined) {
          cases = readPolicyCases(parseYaml(readFileSync(policyFlags.cases, "utf8")));
        } else {
          if (policyFlags.tool === undefined)
            throw new ConfigError("policy test needs --cases <file> or --tool <name>");
          const json = (text: string | undefined, name: string): unknown => {
            try {
              return text === undefined ? undefined : JSON.parse(text);
            } catch {
              throw new ConfigError(`${name} is not JSON`);
            }
          };
          const principal = principalFrom(json(policyFlags.principal, "--principal"), "--principal");
          const decision = policies.decide(
            principal,
            policyFlags.tool,
            (json(policyFlags.args, "--args") ?? {}) as never,
          );
          out(decision.allowed ? "allow" : `deny: policy ${decision.policy}: ${decision.reason} (${decision.detail})`);
          return decision.allowed ? 0 : 1;
        }
        const results = runPolicyCases(policies, cases);
        for (const r of results) out(r.line);
        const failed = results.filter((r) => !r.passed).length;
        out(`${results.length - failed} passed, ${failed} failed (${policies.size} policies)`);
        return failed === 0 ? 0 : 1;
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
