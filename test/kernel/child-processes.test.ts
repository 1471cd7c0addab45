import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import test, { type ExecutionContext } from "ava";
import { isRunning, parseProcessIdentity, type ProcessIdentity } from "../../src/common/process-identity.js";
import { freePort, spawnChild, waitFor, type Child } from "../helpers/processes.js";

const root = new URL("../..", import.meta.url).pathname;
const fixture = join(root, "test/kernel/fixtures/throw-on-sigusr2.mjs");

// Every process whose command line names this data dir's leaf config: the leaf nats-servers.
function leavesOn(dir: string): number[] {
  const conf = join(dir, "nats", "leaf.conf");
  const pids: number[] = [];
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      if (readFileSync(`/proc/${entry}/cmdline`, "utf8").includes(conf)) pids.push(Number(entry));
    } catch {
      // exited meanwhile
    }
  }
  return pids;
}

function dataDir(t: ExecutionContext): string {
  const dir = mkdtempSync(join(tmpdir(), "nops-children-"));
  t.teardown(() => {
    for (const pid of leavesOn(dir)) process.kill(pid, "SIGKILL");
    rmSync(dir, { recursive: true, force: true });
  });
  return dir;
}

async function serve(t: ExecutionContext, dir: string): Promise<{ kernel: Child; leaf: ProcessIdentity }> {
  const kernel = spawnChild(
    t,
    process.execPath,
    ["--import", "tsx", "--import", fixture, join(root, "src/cli.ts"), "serve"],
    {
      NOPS_DATA_DIR: dir,
      NOPS_GRPC_PORT: String(await freePort()),
      NOPS_HTTP_PORT: String(await freePort()),
      NOPS_IDENTITY_SOURCE: "none",
      NOPS_DGE_ENABLED: "false",
      PATH: `${process.env.PATH ?? ""}:/usr/sbin`,
    },
  );
  await waitFor(() => /kernel started/.test(kernel.output()), "kernel start", 60_000);
  const leaf = parseProcessIdentity(readFileSync(join(dir, "nats", "leaf.pid"), "utf8"));
  if (!leaf || !isRunning(leaf)) throw new Error(`no running leaf: ${kernel.output()}`);
  return { kernel, leaf };
}

async function gone(t: ExecutionContext, dir: string, kernel: Child, leaf: ProcessIdentity): Promise<void> {
  await kernel.exited;
  await waitFor(() => !isRunning(leaf), "leaf exit", 15_000);
  t.deepEqual(leavesOn(dir), [], "no nats-server left on the store");
}

test("cli serve - two SIGINTs leave no nats-server behind", async (t) => {
  const dir = dataDir(t);
  const { kernel, leaf } = await serve(t, dir);
  kernel.proc.kill("SIGINT");
  kernel.proc.kill("SIGINT");
  await gone(t, dir, kernel, leaf);
});

test("cli serve - SIGTERM stops gracefully and leaves no nats-server behind", async (t) => {
  const dir = dataDir(t);
  const { kernel, leaf } = await serve(t, dir);
  kernel.proc.kill("SIGTERM");
  t.is(await kernel.exited, 0);
  await gone(t, dir, kernel, leaf);
  t.regex(kernel.output(), /kernel stopped/);
  t.false(existsSync(join(dir, "nats", "leaf.pid")), "a graceful stop removes the pid file");
  t.false(existsSync(join(dir, "kernel.lock")), "and releases the data dir");
});

test("cli serve - an uncaught error leaves no nats-server behind", async (t) => {
  const dir = dataDir(t);
  const { kernel, leaf } = await serve(t, dir);
  kernel.proc.kill("SIGUSR2");
  t.is(await kernel.exited, 1);
  t.regex(kernel.output(), /uncaught error: Error: injected uncaught error/);
  await gone(t, dir, kernel, leaf);
});

test("cli serve - a leaf left by a kill -9 is stopped by the next start: never two servers on one store", async (t) => {
  const dir = dataDir(t);
  const first = await serve(t, dir);
  // The leaf logs to a pipe the kernel reads, so an orphan exits at its next log line (SIGPIPE), which
  // its kernel's dropped connection makes at once. Frozen first, it stands for an orphan that does not
  // (one whose log goes elsewhere): the next start SIGTERMs it, then SIGKILLs it.
  process.kill(first.leaf.pid, "SIGSTOP");
  t.teardown(() => {
    if (isRunning(first.leaf)) process.kill(first.leaf.pid, "SIGKILL");
  });
  first.kernel.proc.kill("SIGKILL");
  await first.kernel.exited;
  t.true(isRunning(first.leaf), "kill -9 skips every exit handler, so the leaf outlives the kernel");

  const second = await serve(t, dir);
  t.false(isRunning(first.leaf), "the stale leaf was stopped");
  t.notDeepEqual(second.leaf, first.leaf);
  t.deepEqual(leavesOn(dir), [second.leaf.pid]);
  t.regex(second.kernel.output(), /did not stop cleanly/);
  t.regex(second.kernel.output(), /stopping a leaf nats-server left running by a previous kernel/);
  second.kernel.proc.kill("SIGTERM");
  await gone(t, dir, second.kernel, second.leaf);
});
