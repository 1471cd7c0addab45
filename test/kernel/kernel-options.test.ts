import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import test from "ava";
import { DEFAULT_KERNEL_OPTIONS, resolveKernelOptions } from "../../src/kernel/kernel-options.js";
import { envBindings, loadRawConfig } from "../../src/kernel/load-config.js";
import { loadKernelOptions } from "../../src/kernel/index.js";

test("config - embedded defaults need no file and no services", (t) => {
  const o = resolveKernelOptions({});
  t.is(o.dataDir, "./data");
  t.is(o.databasePath, join("./data", "kernel.db"));
  t.is(o.grpc.port, 50051);
  t.is(o.http.port, 8080);
  t.false(o.reflection);
});

test("config - YAML and JSON files load, environment wins over the file", (t) => {
  const dir = mkdtempSync(join(tmpdir(), "nops-config-"));
  const yaml = join(dir, "kernel.yaml");
  writeFileSync(yaml, "grpc:\n  port: 6000\nregistry:\n  heartbeatTtlMs: 2000\nlog:\n  level: warn\n");
  const json = join(dir, "kernel.json");
  writeFileSync(json, JSON.stringify({ http: { port: 7000 }, reflection: true }));
  t.is(loadKernelOptions(yaml, {}).grpc.port, 6000);
  t.is(loadKernelOptions(yaml, {}).registry.heartbeatTtlMs, 2000);
  const fromJson = loadKernelOptions(json, {});
  t.is(fromJson.http.port, 7000);
  t.true(fromJson.reflection);
  const env = loadKernelOptions(yaml, {
    NOPS_GRPC_PORT: "6001",
    NOPS_REFLECTION: "true",
    NOPS_LOG_REDACT_PATHS: "a.b, c",
  });
  t.is(env.grpc.port, 6001);
  t.true(env.reflection);
  t.deepEqual(env.log.redactPaths, ["a.b", "c"]);
});

test("config - a bad value is rejected with the field named", (t) => {
  t.throws(() => resolveKernelOptions({ grpc: { port: 70000 } }), {
    message: /^grpc\.port must be an integer from 0 to 65535/,
  });
  t.throws(() => resolveKernelOptions({ grpc: { prot: 1 } }), { message: /^grpc\.prot is not a known option/ });
  t.throws(() => resolveKernelOptions({ log: { level: "loud" } }), { message: /^log\.level must be one of/ });
  t.throws(() => resolveKernelOptions({ edgeId: "Edge 1" }), { message: /^edgeId must match/ });
  t.throws(() => resolveKernelOptions({ registry: { heartbeatTtlMs: 5000, zombieAfterMs: 4000 } }), {
    message: /registry\.zombieAfterMs must be greater/,
  });
  t.throws(() => loadRawConfig({ env: { NOPS_GRPC_PORT: "abc" }, defaults: DEFAULT_KERNEL_OPTIONS }), {
    message: /^NOPS_GRPC_PORT must be a number/,
  });
  t.throws(() => loadRawConfig({ env: { NOPS_REFLECTION: "maybe" }, defaults: DEFAULT_KERNEL_OPTIONS }), {
    message: /^NOPS_REFLECTION must be true or false/,
  });
});

test("config - README documents every environment variable", (t) => {
  const readme = readFileSync(new URL("../../README.md", import.meta.url), "utf8");
  const missing = envBindings(DEFAULT_KERNEL_OPTIONS)
    .map((b) => b.name)
    .filter((name) => !readme.includes(name));
  t.deepEqual(missing, []);
});
