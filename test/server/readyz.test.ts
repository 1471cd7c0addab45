import { chmodSync } from "node:fs";
import test from "ava";
import { startTestKernel } from "../helpers/kernel.js";

test("readyz - ready while SQLite is writable, 503 naming sqlite when the file is made read-only", async (t) => {
  const k = await startTestKernel(t);
  const url = `http://127.0.0.1:${k.kernel.httpPort}`;
  const alive = await fetch(`${url}/healthz`);
  t.is(alive.status, 200);
  const ready = await fetch(`${url}/readyz`);
  t.is(ready.status, 200);
  const report = (await ready.json()) as {
    ready: boolean;
    status: string;
    dependencies: { name: string; state: string }[];
    capabilities: { name: string; mode: string }[];
  };
  t.true(report.ready);
  t.is(report.dependencies.find((d) => d.name === "sqlite")?.state, "ok");
  t.is(report.dependencies.find((d) => d.name === "nats-leaf")?.state, "down");
  t.is(
    report.capabilities.find((c) => c.name === "event-bus")?.mode,
    "degraded",
    "no NATS: the event bus queues locally, the kernel stays ready",
  );
  t.is(report.status, "degraded");

  chmodSync(k.kernel.options.databasePath, 0o444);
  t.teardown(() => chmodSync(k.kernel.options.databasePath, 0o644));
  const notReady = await fetch(`${url}/readyz`);
  t.is(notReady.status, 503);
  const body = (await notReady.json()) as { dependencies: { name: string; state: string; detail?: string }[] };
  const sqlite = body.dependencies.find((d) => d.name === "sqlite");
  t.is(sqlite?.state, "down");
  t.regex(sqlite?.detail ?? "", /read-only/);
  t.is((await fetch(`${url}/healthz`)).status, 200, "the process is still alive");

  chmodSync(k.kernel.options.databasePath, 0o644);
  t.is((await fetch(`${url}/readyz`)).status, 200, "ready again once writable, without a restart");
});

test("http - unknown paths are 404 with a JSON body", async (t) => {
  const k = await startTestKernel(t);
  const res = await fetch(`http://127.0.0.1:${k.kernel.httpPort}/nope`);
  t.is(res.status, 404);
  t.regex(await res.text(), /no route/);
});
