import test from "ava";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import {
  createLeafSupervisor,
  findNatsServer,
  resolveLeafSupervisorOptions,
} from "../../src/events/leaf-supervisor.js";
import { createSilentLogger } from "../../src/telemetry/logger.js";
import { NATS_SERVER_BIN, waitFor } from "../helpers/nats-servers.js";
import { startOnFreePorts } from "../helpers/processes.js";

test("leaf supervisor - writes its config, restarts the server after kill -9 and stops it on shutdown", async (t) => {
  const dataDir = mkdtempSync(join(tmpdir(), "nops-leafsup-"));
  const lines: string[] = [];
  // The supervisor must be told its port; a port taken between pick and bind fails the start, retried on another.
  const sup = await startOnFreePorts(1, async ([port]) => {
    const s = createLeafSupervisor(
      { logger: createSilentLogger(), onLogLine: (line) => lines.push(line) },
      resolveLeafSupervisorOptions({ binary: NATS_SERVER_BIN, dataDir, port, edgeDomain: "dev-edge", password: "pw" }),
    );
    try {
      await s.start();
      return s;
    } catch (err) {
      await s.stop();
      throw err;
    }
  });
  t.teardown(async () => {
    await sup.stop();
    rmSync(dataDir, { recursive: true, force: true });
  });
  t.regex(readFileSync(join(dataDir, "nats", "leaf.conf"), "utf8"), /domain: "dev-edge"/);
  // The kernel reads the server's log line by line, debug lines included (createLeafLog counts refusals in them).
  await waitFor(() => lines.some((l) => / \[DBG\] /.test(l)), "the leaf's debug log lines");
  t.true(
    lines.every((l) => !l.includes("\n") && l !== ""),
    "one whole line at a time",
  );
  const first = sup.pid();
  t.truthy(first);
  if (first) process.kill(first, "SIGKILL");
  await waitFor(() => sup.pid() !== undefined && sup.pid() !== first, "a new server process", 30_000);
  const second = sup.pid();
  await sup.stop();
  t.is(sup.pid(), undefined);
  t.throws(() => second !== undefined && process.kill(second, 0), { code: "ESRCH" });
});

test("leaf supervisor - finds nats-server on a PATH string and validates options", (t) => {
  t.is(findNatsServer(`/nonexistent:${dirname(NATS_SERVER_BIN)}`), NATS_SERVER_BIN);
  t.is(findNatsServer("/nonexistent"), undefined);
  t.throws(() => resolveLeafSupervisorOptions({ binary: "x", dataDir: "d", edgeDomain: "e" }), {
    message: /events\.leaf\.password is required/,
  });
  t.throws(
    () => resolveLeafSupervisorOptions({ binary: "x", dataDir: "d", edgeDomain: "e", password: "p", port: 70000 }),
    { message: /events\.leaf\.port/ },
  );
});
