// Runs every benchmark case in turn (npm run bench). Each prints its figures and its ratio to a
// baseline measured in the same run; see bench/RESULTS.md for recorded results.
import { spawnSync } from "node:child_process";

const CASES = ["heartbeat.ts", "event-bus.ts", "egress-guard.ts", "invoke.ts", "tracing.ts", "mcp.ts"];
let failed = 0;
for (const file of CASES) {
  process.stdout.write(`\n=== bench/${file} ===\n`);
  const r = spawnSync(process.execPath, ["--import", "tsx", new URL(file, import.meta.url).pathname], {
    stdio: "inherit",
  });
  if (r.status !== 0) failed++;
}
process.exit(failed ? 1 : 0);
