#!/usr/bin/env node
// Runs the whole ava suite with the TAP reporter and ends with the one line CI reads:
// "N passed, N failed". Extra arguments are passed to ava (e.g. a file glob).
import { execFileSync, spawn } from "node:child_process";
import { createInterface } from "node:readline";

execFileSync("bash", ["scripts/ensure-test-deps.sh"], { stdio: "inherit" });
process.env.PATH = `${process.env.PATH}:/usr/sbin`;

const ava = spawn(process.execPath, ["node_modules/ava/entrypoints/cli.mjs", "--tap", ...process.argv.slice(2)], {
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
