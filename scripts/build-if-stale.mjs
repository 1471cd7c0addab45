#!/usr/bin/env node
// `npm start` compiles only when a source is newer than the last build, so a start with nothing
// changed goes straight to the kernel instead of spending ~20 s in tsc. The build itself is
// incremental (tsconfig.build.json keeps its build info in dist/).
import { execFileSync } from "node:child_process";
import { existsSync, readdirSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";

const STAMP = "dist/.build-stamp";
const INPUTS = [
  "src",
  "gen",
  "packages/reference-dge/src",
  "package.json",
  "package-lock.json",
  "tsconfig.json",
  "tsconfig.build.json",
];

function newestMtime(path) {
  const st = statSync(path);
  if (!st.isDirectory()) return st.mtimeMs;
  let newest = st.mtimeMs;
  for (const entry of readdirSync(path)) newest = Math.max(newest, newestMtime(join(path, entry)));
  return newest;
}

const built = existsSync(STAMP) ? statSync(STAMP).mtimeMs : 0;
const changed = INPUTS.filter((p) => existsSync(p) && newestMtime(p) > built);
if (changed.length) {
  process.stderr.write(`building (changed since the last build: ${changed.join(", ")})\n`);
  execFileSync(process.execPath, ["node_modules/typescript/bin/tsc", "-p", "tsconfig.build.json"], {
    stdio: "inherit",
  });
  writeFileSync(STAMP, `${new Date().toISOString()}\n`);
}
