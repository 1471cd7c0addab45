import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import test from "ava";
import Database from "better-sqlite3";
import { spawnChild, waitFor } from "./helpers/processes.js";

const root = new URL("..", import.meta.url).pathname;
const tsx = ["--import", "tsx", join(root, "src/cli.ts")];

function cli(args: string[], env: Record<string, string>): { code: number; out: string } {
  try {
    const out = execFileSync(process.execPath, [...tsx, ...args], {
      env: { ...process.env, ...env },
      encoding: "utf8",
      stdio: ["ignore", "pipe", "pipe"],
    });
    return { code: 0, out };
  } catch (e) {
    const err = e as { status: number; stdout: string; stderr: string };
    return { code: err.status, out: err.stdout + err.stderr };
  }
}

// The README's shell blocks that call the running kernel, with the default ports swapped for this test's.
function readmeExamples(grpcPort: number, httpPort: number, dataDir: string): string[] {
  const readme = readFileSync(join(root, "README.md"), "utf8");
  return [...readme.matchAll(/```sh\n([\s\S]*?)```/g)]
    .map((m) => m[1] ?? "")
    .filter((block) => /^(curl|npx buf curl) /m.test(block))
    .map((block) =>
      block
        .replaceAll("localhost:8080", `localhost:${httpPort}`)
        .replaceAll("localhost:50051", `localhost:${grpcPort}`)
        .replaceAll("data/dev-identity/", `${dataDir}/dev-identity/`),
    );
}

test("cli - the built kernel starts on embedded defaults (dev SPIFFE identity) and every README example works as written", async (t) => {
  execFileSync("npm", ["run", "build", "--silent"], { cwd: root, stdio: "pipe" });
  const dataDir = mkdtempSync(join(tmpdir(), "nops-cli-"));
  // Port 0: the kernel binds and logs its ports, so no other process can take them in between.
  const kernel = spawnChild(t, process.execPath, [join(root, "dist/src/cli.js"), "serve"], {
    NOPS_DATA_DIR: dataDir,
    NOPS_GRPC_PORT: "0",
    NOPS_HTTP_PORT: "0",
  });
  // Generous: the first start mints the dev CA and starts the DGE and the leaf nats-server, and
  // the suite shares two cores with its other process-starting files.
  await waitFor(() => /kernel started/.test(kernel.output()), "kernel start", 120_000).catch((err: unknown) => {
    throw new Error(`${(err as Error).message}\n--- kernel output ---\n${kernel.output().slice(-4000)}`);
  });
  const started = kernel
    .output()
    .split("\n")
    .filter((l) => l.includes('"kernel started"'))
    .map((l) => JSON.parse(l.slice(l.indexOf("{"))) as { grpc?: string; http?: string })[0];
  const portOf = (hostPort: string | undefined) => Number(hostPort?.split(":").pop());
  const [grpcPort, httpPort] = [portOf(started?.grpc), portOf(started?.http)];
  t.true(grpcPort > 0 && httpPort > 0, `ports from the start line: ${started?.grpc} ${started?.http}`);
  const examples = readmeExamples(grpcPort, httpPort, dataDir);
  t.true(examples.length >= 4, "README has curl and buf curl examples");
  // The heartbeat example names the agent registered by the first one.
  const outputs: string[] = [];
  for (const script of examples) {
    const id = /"id":\s*"([^"]+)"/.exec(outputs[0] ?? "")?.[1] ?? "";
    outputs.push(
      execFileSync("bash", ["-euo", "pipefail", "-c", script.replaceAll("<id from RegisterAgent>", id)], {
        cwd: root,
        encoding: "utf8",
      }),
    );
  }
  t.true(outputs[0]?.includes("summarizer"), "RegisterAgent answered over Connect (curl)");
  t.true(
    outputs.some((o) => o.includes('"HEALTHY"') || o.includes("AGENT_STATUS_HEALTHY")),
    "the heartbeat answered",
  );
  t.true(
    outputs.some((o) => o.includes("translator")),
    "RegisterAgent answered over gRPC (buf curl)",
  );
  t.true(outputs.some((o) => o.includes("SERVING")));
  t.true(outputs.some((o) => o.includes('"alive"')));

  kernel.proc.kill("SIGTERM");
  t.is(await kernel.exited, 0, kernel.output());
  t.regex(kernel.output(), /kernel stopped/);
});

test("cli - migrate status, down and up keep the data; audit verify catches tampering", (t) => {
  const dataDir = mkdtempSync(join(tmpdir(), "nops-cli-"));
  const env = { NOPS_DATA_DIR: dataDir, NOPS_LOG_LEVEL: "silent" };
  t.regex(cli(["migrate", "up"], env).out, /applied: 1/);
  t.regex(cli(["migrate", "status"], env).out, /schema version (\d+) of \1/);
  const db = new Database(join(dataDir, "kernel.db"));
  db.prepare("INSERT INTO agents VALUES ('a1', 'acme', 'n', '1', 'h:1', '[]', '{}', 1, 2, 1)").run();
  db.close();
  t.regex(cli(["migrate", "down", "--steps", "1"], env).out, /reverted: \d+/);
  t.regex(cli(["migrate", "status"], env).out, /pending/);
  t.regex(cli(["migrate", "up"], env).out, /applied: \d+/);
  const after = new Database(join(dataDir, "kernel.db"));
  t.is((after.prepare("SELECT count(*) AS n FROM agents").get() as { n: number }).n, 1);
  after.close();

  t.is(cli(["audit", "verify"], env).code, 0);
  const tamper = new Database(join(dataDir, "kernel.db"));
  tamper.exec(`INSERT INTO audit_log VALUES (1, 1, 'a', 'x', 't', 'r', 'ok', '{}', '', '${"0".repeat(64)}', 'bad')`);
  tamper.close();
  const verify = cli(["audit", "verify"], env);
  t.is(verify.code, 1);
  t.regex(verify.out, /TAMPERED at row 1/);
});

test("cli - bad configuration stops with the field named", (t) => {
  const bad = cli(["serve"], { NOPS_GRPC_PORT: "70000", NOPS_DATA_DIR: mkdtempSync(join(tmpdir(), "nops-cli-")) });
  t.is(bad.code, 2);
  t.regex(bad.out, /grpc\.port must be an integer from 0 to 65535/);
  t.regex(cli(["version"], {}).out, /^\d+\.\d+\.\d+/);
  t.is(cli(["frobnicate"], {}).code, 2);
});

test("cli - hub add-edge, list-edges and revoke-edge; a bad flag exits 2 naming it", (t) => {
  const dir = mkdtempSync(join(tmpdir(), "nops-cli-hub-"));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const registry = join(dir, "edges.json");
  const add = cli(
    [
      "hub",
      "add-edge",
      "--registry",
      registry,
      "--edge",
      "edge-eu-1",
      "--tenants",
      "acme",
      "--secret-out",
      join(dir, "s"),
    ],
    {},
  );
  t.is(add.code, 0, add.out);
  t.regex(add.out, /added edge-eu-1 \(user edge-edge-eu-1, tenants acme\)/);
  t.regex(cli(["hub", "list-edges", "--registry", registry], {}).out, /^edge-eu-1\tuser=edge-edge-eu-1/m);
  t.is(cli(["hub", "revoke-edge", "--registry", registry, "--edge", "edge-eu-1"], {}).code, 0);
  t.is(cli(["hub", "list-edges", "--registry", registry], {}).out, "");
  const bad = cli(["hub", "add-edge", "--registry", registry, "--edge", "x", "--tenant", "acme"], {});
  t.is(bad.code, 2);
  t.regex(bad.out, /hub: unknown argument --tenant/);
});

test("cli - hub set-dge-policy refuses a bad flag by name before connecting to the hub", (t) => {
  // Port 1 has nothing listening: a refusal that reached the network would say so instead.
  const flags = ["--hub", "nats://127.0.0.1:1", "--edge", "edge-1", "--issued-by", "ops", "--tier", "1"];
  const bad = cli(["hub", "set-dge-policy", ...flags, "--max-class", "D5"], {});
  t.is(bad.code, 2);
  t.regex(bad.out, /--max-class must be one of D0, D1, D2, D3, D4 \(got D5\)/);
  const noClass = cli(["hub", "set-dge-policy", ...flags], {});
  t.is(noClass.code, 2);
  t.regex(noClass.out, /hub set-dge-policy needs --max-class/);
  t.regex(cli(["hub", "help"], {}).out, /nops-kernel hub clear-dge-policy --hub <nats url>/);
});
