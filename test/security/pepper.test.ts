import { randomBytes } from "node:crypto";
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import test, { type ExecutionContext } from "ava";
import { AgentRegistryService } from "../../gen/nops/kernel/v1/agent_registry_pb.js";
import { createTestCa } from "../helpers/test-ca.js";
import { startWorkloadApiDouble } from "../helpers/workload-api-double.js";
import { startTestKernel } from "../helpers/kernel.js";

// Issue 13 item 17 (pepper): the API key pepper must not sit beside the database, where a copy of
// the data directory would carry both the hashes and their key, unless development allows it.

const TD = "nops.test";

function secretDir(t: ExecutionContext): string {
  const dir = mkdtempSync(join(tmpdir(), "nops-secrets-"));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

function pepperFile(dir: string): string {
  const file = join(dir, "api-key-pepper");
  writeFileSync(file, randomBytes(32).toString("base64") + "\n", { mode: 0o600 });
  return file;
}

async function workloadIdentity(t: ExecutionContext): Promise<Record<string, unknown>> {
  const ca = await createTestCa(TD);
  const wl = await startWorkloadApiDouble();
  t.teardown(() => wl.close());
  const id = `spiffe://${TD}/nops/kernel/edge-test`;
  wl.issue({ spiffeId: id, svid: await ca.issue({ spiffeId: id }), bundle: ca.certDer });
  return { source: "workload-api", socket: wl.address };
}

test("pepper - a production kernel refuses to generate its pepper beside the database", async (t) => {
  const identity = await workloadIdentity(t);
  await t.throwsAsync(startTestKernel(t, { edgeId: "edge-test", trustDomain: TD, identity }), {
    message: /identity\.allowPepperBesideDatabase/,
  });
});

test("pepper - a pepper file in the database's directory or below it is refused unless allowed", async (t) => {
  const dataDir = secretDir(t);
  mkdirSync(join(dataDir, "secrets"));
  for (const file of [pepperFile(dataDir), pepperFile(join(dataDir, "secrets"))]) {
    await t.throwsAsync(
      startTestKernel(t, {
        dataDir,
        edgeId: "edge-test",
        trustDomain: TD,
        identity: { ...(await workloadIdentity(t)), apiKeyPepperFile: file },
      }),
      { message: /identity\.apiKeyPepperFile.*beside the database/ },
      file,
    );
  }
  // Development may say so explicitly (the same edge: its audit key carries the edge's name).
  const k = await startTestKernel(t, {
    dataDir,
    edgeId: "edge-test",
    identity: { source: "none", apiKeyPepperFile: join(dataDir, "api-key-pepper"), allowPepperBesideDatabase: true },
  });
  t.truthy(k.kernel.httpPort);
});

test("pepper - development refuses it too when told to, and a missing pepper file is named", async (t) => {
  await t.throwsAsync(startTestKernel(t, { identity: { source: "dev", allowPepperBesideDatabase: false } }), {
    message: /identity\.allowPepperBesideDatabase/,
  });
  await t.throwsAsync(
    startTestKernel(t, { identity: { source: "none", apiKeyPepperFile: join(secretDir(t), "absent") } }),
    { message: /identity\.apiKeyPepperFile: .*absent cannot be read/ },
  );
});

test("pepper - a pepper file or value kept elsewhere works for a production kernel, and nothing lands in the data dir", async (t) => {
  const file = pepperFile(secretDir(t));
  for (const identity of [
    { ...(await workloadIdentity(t)), apiKeyPepperFile: file },
    { ...(await workloadIdentity(t)), apiKeyPepper: randomBytes(32).toString("base64") },
  ]) {
    const k = await startTestKernel(t, { edgeId: "edge-test", trustDomain: TD, identity });
    t.false(existsSync(join(k.dir, "api-key-pepper")));
    t.truthy(k.client(AgentRegistryService, "in-process"));
  }
});
