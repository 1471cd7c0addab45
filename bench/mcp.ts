// MCP tools/call versus Invoke for the same echo agent process, in one run against the built kernel
// process: the same HTTP port, HTTP/1.1, JSON, a bearer token each, the same chain and Egress Guard.
// Invoke is Connect JSON (one POST per call); tools/call is the official MCP client over Streamable
// HTTP (one session per worker). The figure is the throughput ratio and the added latency.
//   node --import tsx bench/mcp.ts [--seconds 8] [--concurrency 16]
import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { SignJWT } from "jose";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { spawnEchoAgent } from "../test/routing/fixtures/spawn-echo-agent.js";
import { formatResult, runLoad } from "./lib/load.js";
import { LIFTED_RATE_LIMITS } from "./lib/kernel.js";

const { values: flags } = parseArgs({
  options: { seconds: { type: "string", default: "8" }, concurrency: { type: "string", default: "16" } },
});
const root = fileURLToPath(new URL("..", import.meta.url));
const SECRET = "bench-secret-of-at-least-32-bytes-long!!";
const ISSUER = "https://bench.idp";

const CONFIG = {
  identity: { source: "none", jwt: { issuer: ISSUER, audience: "nops", algorithms: ["HS256"], hmacSecret: SECRET } },
  nats: { leaf: "off" },
  log: { level: "warn" },
  rateLimit: LIFTED_RATE_LIMITS,
  egress: { tenantTiers: { bench: 1 } },
};

async function startKernel(): Promise<{ process: ChildProcess; httpPort: number }> {
  if (!process.env.NOPS_BENCH_SKIP_BUILD)
    execFileSync("npm", ["run", "build", "--silent"], { cwd: root, stdio: "inherit" });
  const dataDir = mkdtempSync(join(tmpdir(), "nops-bench-mcp-"));
  const config = join(dataDir, "bench.json");
  writeFileSync(config, JSON.stringify({ ...CONFIG, log: { level: "info" } }));
  const child = spawn(process.execPath, [join(root, "dist/src/cli.js"), "serve", "--config", config], {
    env: { ...process.env, NOPS_DATA_DIR: dataDir, NOPS_GRPC_PORT: "0", NOPS_HTTP_PORT: "0" },
    stdio: ["ignore", "pipe", "inherit"],
  });
  const httpPort = await new Promise<number>((resolve, reject) => {
    child.once("exit", (c) => reject(new Error(`kernel exited ${c}`)));
    createInterface({ input: child.stdout }).on("line", (l) => {
      const m = /"http":"[^"]*:(\d+)"/.exec(l);
      if (m) resolve(Number(m[1]));
    });
  });
  return { process: child, httpPort };
}

const token = (audience: string) =>
  new SignJWT({ roles: ["OPERATOR"], tenant: "bench" })
    .setProtectedHeader({ alg: "HS256" })
    .setIssuer(ISSUER)
    .setAudience(audience)
    .setSubject("bench")
    .setIssuedAt()
    .setExpirationTime("1h")
    .sign(new TextEncoder().encode(SECRET));

async function main(): Promise<void> {
  const agent = await spawnEchoAgent({ name: "bench-mcp" });
  const kernel = await startKernel();
  try {
    const base = `http://127.0.0.1:${kernel.httpPort}`;
    const kernelToken = await token("nops");
    const json = { "content-type": "application/json", authorization: `Bearer ${kernelToken}` };
    const reg = await fetch(`${base}/nops.kernel.v1.AgentRegistryService/RegisterAgent`, {
      method: "POST",
      headers: json,
      body: JSON.stringify({
        tenant: "bench",
        name: "echo",
        version: "1",
        endpoint: agent.endpoint,
        capabilities: [{ name: "echo" }],
      }),
    });
    if (!reg.ok) throw new Error(`register: ${reg.status} ${await reg.text()}`);
    const toolArgs = { order: "A-7", items: 3, note: "bench" };
    const invokeBody = JSON.stringify({
      tenant: "bench",
      capability: "echo",
      payload: Buffer.from(JSON.stringify(toolArgs)).toString("base64"),
      contentType: "application/json",
    });
    const concurrency = Number(flags.concurrency);
    const seconds = Number(flags.seconds);
    const invoke = await runLoad({
      name: "Invoke (Connect JSON, HTTP/1.1)",
      concurrency,
      warmupMs: 2000,
      durationMs: seconds * 1000,
      call: async () => {
        const res = await fetch(`${base}/nops.kernel.v1.RoutingService/Invoke`, {
          method: "POST",
          headers: json,
          body: invokeBody,
        });
        if (!res.ok) throw new Error(String(res.status));
        await res.arrayBuffer();
      },
    });
    const mcpToken = await token(`${base}/mcp`);
    let firstError: string | undefined;
    const clients = await Promise.all(
      Array.from({ length: concurrency }, async () => {
        const c = new Client({ name: "bench", version: "1" });
        await c.connect(
          new StreamableHTTPClientTransport(new URL(`${base}/mcp`), {
            requestInit: { headers: { authorization: `Bearer ${mcpToken}` } },
          }),
        );
        return c;
      }),
    );
    const mcp = await runLoad({
      name: "MCP tools/call (official client)",
      concurrency,
      warmupMs: 2000,
      durationMs: seconds * 1000,
      call: async (i) => {
        try {
          const r = await clients[i]!.callTool({ name: "echo", arguments: toolArgs });
          if (r.isError) throw new Error(`tool error: ${JSON.stringify(r.content).slice(0, 200)}`);
        } catch (e) {
          firstError ??= e instanceof Error ? e.message : String(e);
          throw e;
        }
      },
    });
    await Promise.all(clients.map((c) => c.close()));
    if (firstError) process.stdout.write(`first MCP error: ${firstError}\n`);
    process.stdout.write(`${formatResult(invoke)}\n${formatResult(mcp, invoke)}\n`);
    process.stdout.write(
      `added latency p50 ${(mcp.p50Ms - invoke.p50Ms).toFixed(2)} ms, p99 ${(mcp.p99Ms - invoke.p99Ms).toFixed(2)} ms\n`,
    );
  } finally {
    if (kernel.process.pid) process.kill(kernel.process.pid, "SIGTERM");
    await agent.kill();
  }
}

await main();
