#!/usr/bin/env node
// Runs the whole ava suite with the TAP reporter and ends with the one line CI reads:
// "N passed, N failed". Extra arguments are passed to ava (e.g. a file glob).
// `--lane=unit` runs only the test files that start no process (no nats-server, redis-server,
// kernel CLI, agent or DGE child); `--lane=integration` runs the others.
import { execFileSync, spawn } from "node:child_process";
import { readFileSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { createInterface } from "node:readline";

// A test file that calls one of these starts a process. Checked on the file itself: the
// helpers that start processes are called by name from the tests that need them.
const STARTS_PROCESS =
  /\b(?:startNatsTopology|startRedisServer|spawnRedis|spawnDge|spawnEchoAgent|spawnChild|execFileSync|execFile|spawn)\s*\(|\bNATS_SERVER_BIN\b|from "node:child_process"/;

// Whole folders of end-to-end suites (agent processes, attack and fault runs, fuzzing).
const INTEGRATION_DIRS = ["test/sdk/", "test/abuse/", "test/faults/", "test/fuzz/"];
const isIntegration = (file) =>
  INTEGRATION_DIRS.some((d) => file.startsWith(d)) || STARTS_PROCESS.test(readFileSync(file, "utf8"));

let args = process.argv.slice(2);
const lane = args.find((a) => a.startsWith("--lane="))?.slice("--lane=".length);
args = args.filter((a) => !a.startsWith("--lane="));
if (lane !== undefined) {
  if (lane !== "unit" && lane !== "integration") {
    process.stderr.write(`--lane must be "unit" or "integration", got "${lane}"\n`);
    process.exit(2);
  }
  const files = readdirSync("test", { recursive: true })
    .map(String)
    .filter((f) => f.endsWith(".test.ts"))
    .map((f) => join("test", f))
    .filter((f) => isIntegration(f) === (lane === "integration"))
    .sort();
  args = [...files, ...args];
}

if (lane !== "unit") execFileSync("bash", ["scripts/ensure-test-deps.sh"], { stdio: "inherit" });
process.env.PATH = `${process.env.PATH}:/usr/sbin`;

const ava = spawn(process.execPath, ["node_modules/ava/entrypoints/cli.mjs", "--tap", ...args], {
  stdio: ["ignore", "pipe", "inherit"],
  env: { ...process.env, FORCE_COLOR: "0" },
});

let passed = 0;
let failed = 0;
let skipped = 0;
const lines = createInterface({ input: ava.stdout });
lines.on("line", (line) => {
  process.stdout.write(line + "\n");
  if (/^not ok \d+/.test(line)) failed++;
  else if (/^ok \d+ .*# SKIP/.test(line)) skipped++;
  else if (/^ok \d+/.test(line)) passed++;
});

ava.on("close", (code, signal) => {
  // A crash outside any test (uncaught exception, timeout) has no "not ok" line of its own.
  if ((code !== 0 || signal) && failed === 0) failed = 1;
  process.stdout.write(`${passed} passed, ${failed} failed${skipped ? `, ${skipped} skipped` : ""}\n`);
  process.exit(code ?? 1);
});
