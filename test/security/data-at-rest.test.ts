import { chmodSync, mkdtempSync, readdirSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import test from "ava";
import { AgentRegistryService } from "../../gen/nops/kernel/v1/agent_registry_pb.js";
import { startTestKernel } from "../helpers/kernel.js";
import { openDatabase } from "../../src/store/database.js";

const mode = (path: string) => statSync(path).mode & 0o777;

test("data at rest - database, WAL, pepper and development keys are 0600 in 0700 directories", async (t) => {
  const k = await startTestKernel(t, { identity: { source: "dev" } });
  // A write makes sure the WAL exists.
  const client = k.client(AgentRegistryService, "connect-json");
  await client.listAgents({ tenant: "acme" }).catch(() => undefined);
  for (const file of ["kernel.db", "kernel.db-wal", "kernel.db-shm", "api-key-pepper", "kernel.lock"])
    t.is(mode(join(k.dir, file)), 0o600, file);
  for (const file of readdirSync(join(k.dir, "dev-identity")).filter((f) => f.endsWith(".key")))
    t.is(mode(join(k.dir, "dev-identity", file)), 0o600, file);
  t.is(mode(join(k.dir, "dev-identity")), 0o700);
});

test("data at rest - a fresh data dir is created 0700 and a readable old database is tightened", (t) => {
  const parent = mkdtempSync(join(tmpdir(), "nops-rest-"));
  t.teardown(() => rmSync(parent, { recursive: true, force: true }));
  const fresh = join(parent, "fresh", "kernel.db");
  openDatabase({ path: fresh }).close();
  t.is(mode(join(parent, "fresh")), 0o700);
  t.is(mode(fresh), 0o600);
  const old = join(parent, "old.db");
  writeFileSync(old, "");
  chmodSync(old, 0o644);
  openDatabase({ path: old }).close();
  t.is(mode(old), 0o600);
});
