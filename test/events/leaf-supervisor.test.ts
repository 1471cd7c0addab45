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
import { NATS_SERVER_BIN, freePort, waitFor } from "../helpers/nats-servers.js";

test("leaf supervisor - writes its config, restarts the server after kill -9 and stops it on shutdown", async (t) => {
  const dataDir = mkdtempSync(join(tmpdir(), "nops-leafsup-"));
  const port = await freePort();
  const sup = createLeafSupervisor(
    { logger: createSilentLogger() },
    resolveLeafSupervisorOptions({ binary: NATS_SERVER_BIN, dataDir, port, edgeDomain: "dev-edge", password: "pw" }),
  );
  t.teardown(async () => {
    await sup.stop();
    rmSync(dataDir, { recursive: true, force: true });
  });
  await sup.start();
  t.regex(readFileSync(join(dataDir, "nats", "leaf.conf"), "utf8"), /domain: "dev-edge"/);
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
