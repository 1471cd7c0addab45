// Runs every benchmark case in turn (npm run bench). Each prints its figures and its ratio to a
// baseline measured in the same run; see bench/RESULTS.md for recorded results.
// `npm run bench -- --smoke` runs each case for about a second: it checks that the bench works
// (every case runs and answers without errors), not the numbers. CI runs it.
import { spawnSync } from "node:child_process";

const smoke = process.argv.includes("--smoke");
const CASES: Array<[file: string, smokeArgs: string[]]> = [
  ["heartbeat.ts", ["--seconds", "1", "--rounds", "1"]],
  ["event-bus.ts", ["--rate", "200", "--seconds", "1", "--backlog", "200"]],
  ["egress-guard.ts", ["200"]],
  ["dge-runtime.ts", ["1"]],
  ["invoke.ts", ["--seconds", "1"]],
  ["agent-client.ts", ["--seconds", "1", "--rounds", "1"]],
  ["chain.ts", ["--calls", "2000", "--rounds", "1"]],
  ["tracing.ts", ["--seconds", "1", "--rounds", "1"]],
  ["mcp.ts", ["--seconds", "1"]],
  ["federation.ts", ["--seconds", "2", "--rate", "50", "--connections", "1", "--streams", "4"]],
  ["hub-latency.ts", ["--rate", "100", "--seconds", "1"]],
];
let failed = 0;
for (const [file, smokeArgs] of CASES) {
  process.stdout.write(`\n=== bench/${file} ===\n`);
  const r = spawnSync(
    process.execPath,
    ["--import", "tsx", new URL(file, import.meta.url).pathname, ...(smoke ? smokeArgs : [])],
    { stdio: "inherit" },
  );
  if (r.status !== 0) {
    process.stdout.write(`bench/${file} failed (exit ${r.status ?? r.signal})\n`);
    failed++;
  }
}
process.exit(failed ? 1 : 0);
