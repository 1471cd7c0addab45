import test from "ava";
import { execFile } from "node:child_process";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { promisify } from "node:util";
import { FederationService } from "../../gen/nops/federation/v1/federation_pb.js";
import { startFedKernel, eventually, type FedKernel } from "./two-kernels.js";

const root = join(import.meta.dirname, "..", "..");
const run = promisify(execFile);

async function cli(k: FedKernel, ...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const config = join(k.dir, "cli-config.json");
  writeFileSync(config, JSON.stringify({ dataDir: k.dir, trustDomain: k.trustDomain }));
  try {
    const { stdout, stderr } = await run(
      process.execPath,
      ["--import", "tsx", join(root, "src/cli.ts"), ...args, "--config", config],
      { cwd: root, env: { PATH: process.env.PATH ?? "" }, timeout: 120_000 },
    );
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

async function refused(p: Promise<unknown>): Promise<boolean> {
  try {
    await p;
    return false;
  } catch {
    return true;
  }
}

test("federation - nops-kernel peers add|list|remove edit the registry of a running kernel, audited", async (t) => {
  const a = await startFedKernel("edge-a", "edge-a.test");
  t.teardown(() => a.stop());
  const b = await startFedKernel("edge-b", "edge-b.test", { federation: { reloadIntervalMs: 200 } });
  t.teardown(() => b.stop());
  const asA = () => a.client(FederationService, { kernel: b, transport: "grpc", as: "kernel" });
  // Before the pin, B's gRPC port (strict mTLS) does not accept A's kernel SVID.
  t.true(await refused(asA().discover({})));

  const bundleFile = join(b.dir, "edge-a-bundle.json");
  writeFileSync(bundleFile, (await a.get("/federation/bundle")).body);
  const bad = await cli(b, "peers", "add", "--spiffe-id", a.spiffeId, "--grpc", "nowhere", "--http", a.httpEndpoint);
  t.is(bad.code, 2);
  t.regex(bad.stderr, /grpc_endpoint: must be host:port/);
  const added = await cli(
    b,
    ...["peers", "add", "--spiffe-id", a.spiffeId, "--grpc", a.grpcEndpoint, "--http", a.httpEndpoint],
    ...["--bundle-file", bundleFile, "--inbound-tenants", "acme,globex", "--outbound-tenants", "acme"],
  );
  t.is(added.code, 0, added.stderr);
  t.regex(added.stdout, /pinned spiffe:\/\/edge-a\.test\/nops\/kernel\/edge-a {2}pending/);
  const listed = await cli(b, "peers", "list");
  t.regex(listed.stdout, /inbound tenants \[acme,globex\]/);

  // The running kernel picks the pin up: A's SVID now passes B's TLS.
  await eventually(async () => ((await refused(asA().discover({}))) ? undefined : true), "B to trust A");
  t.is(b.audit("federation.peer.add")[0]?.actor, "cli");

  t.is((await cli(b, "peers", "remove", "--spiffe-id", a.spiffeId)).code, 0);
  await eventually(async () => ((await refused(asA().discover({}))) ? true : undefined), "B to stop trusting A");
  t.is((await cli(b, "peers", "list")).stdout.trim(), "no peers");
  t.is(b.audit("federation.peer.remove")[0]?.actor, "cli");
});
