import { execFile } from "node:child_process";
import { join } from "node:path";
import { promisify } from "node:util";
import test from "ava";
import { ConfigError } from "../../src/common/errors.js";
import { createMemoryTrim, resolveMemoryTrimOptions, type MemoryTrimProbes } from "../../src/server/memory-trim.js";
import { createSilentLogger } from "../../src/telemetry/logger.js";

const MiB = 1024 * 1024;

/** Probes whose readings the test sets; counts collections. */
function fakeProbes(withGc = true): MemoryTrimProbes & { busy: number; rss: number; collections: number } {
  const p = {
    busy: 0.01,
    rss: 40 * MiB,
    collections: 0,
    utilization: () => p.busy,
    rssBytes: () => p.rss,
    collect: withGc
      ? () => {
          p.collections++;
          p.rss = 45 * MiB;
        }
      : undefined,
  };
  return p;
}

const options = resolveMemoryTrimOptions({ quietMs: 3000, minGrowthMiB: 32 });

test("trims once the kernel has been quiet for quietMs after its memory grew, and only then", (t) => {
  const probes = fakeProbes();
  const trim = createMemoryTrim({ logger: createSilentLogger(), probes }, options);
  probes.busy = 0.9;
  probes.rss = 160 * MiB;
  t.false(trim.sample(), "busy: no trim");
  probes.busy = 0.02;
  t.false(trim.sample(), "quiet for 1 s");
  t.false(trim.sample(), "quiet for 2 s");
  probes.busy = 0.3;
  t.false(trim.sample(), "one busy second restarts the quiet window");
  probes.busy = 0.02;
  t.false(trim.sample());
  t.false(trim.sample());
  t.is(probes.collections, 0);
  t.true(trim.sample(), "quiet for 3 s after growth");
  t.is(probes.collections, 1);
  // The trim's level is the new baseline: no second trim without new growth.
  for (let i = 0; i < 10; i++) t.false(trim.sample());
  t.is(probes.collections, 1);
});

test("the first quiet window after the start trims what starting left", (t) => {
  const probes = fakeProbes();
  const trim = createMemoryTrim({ logger: createSilentLogger(), probes }, options);
  t.false(trim.sample());
  t.false(trim.sample());
  t.true(trim.sample());
  t.is(probes.collections, 1);
});

test("does not trim a quiet kernel whose memory did not grow by minGrowthMiB", (t) => {
  const probes = fakeProbes();
  const trim = createMemoryTrim({ logger: createSilentLogger(), probes }, options);
  for (let i = 0; i < 3; i++) trim.sample();
  t.is(probes.collections, 1, "the start's trim");
  probes.rss = 76 * MiB;
  for (let i = 0; i < 10; i++) t.false(trim.sample());
  // Growth counts from the lowest resident set seen: memory returned without a trim lowers the baseline.
  probes.rss = 30 * MiB;
  t.false(trim.sample());
  t.is(probes.collections, 1);
  probes.rss = 63 * MiB;
  t.true(trim.sample(), "33 MiB above the low point");
  t.is(probes.collections, 2);
});

test("without --expose-gc the trim never collects and says it is off", (t) => {
  const probes = fakeProbes(false);
  const lines: string[] = [];
  const logger = createSilentLogger();
  logger.child = () => ({ info: (msg: string) => lines.push(msg) }) as never;
  const trim = createMemoryTrim({ logger, probes }, options);
  trim.start();
  trim.stop();
  probes.rss = 500 * MiB;
  for (let i = 0; i < 5; i++) t.false(trim.sample());
  t.true(lines.some((l) => l.includes("--expose-gc")));
});

test("admin.memoryTrim is validated, naming the field", (t) => {
  t.deepEqual(resolveMemoryTrimOptions(undefined), {
    enabled: true,
    quietMs: 10_000,
    quietUtilization: 0.05,
    minGrowthMiB: 32,
  });
  t.throws(() => resolveMemoryTrimOptions({ quietMs: 10 }), { instanceOf: ConfigError, message: /quietMs/ });
  t.throws(() => resolveMemoryTrimOptions({ quietUtilization: 2 }), {
    instanceOf: ConfigError,
    message: /quietUtilization/,
  });
  t.throws(() => resolveMemoryTrimOptions({ minGrowthMiB: 0 }), { instanceOf: ConfigError, message: /minGrowthMiB/ });
  t.throws(() => resolveMemoryTrimOptions({ every: 1 }), { instanceOf: ConfigError, message: /every/ });
});

test("the process probes return a burst's heap to the OS under node --expose-gc", async (t) => {
  // A child process: the test runner's own node has no gc(). It starts the trim, fills the heap with
  // objects, drops them, and trims with the real probes once quiet; it prints the committed heap before and after.
  const script = `
    import { createMemoryTrim } from ${JSON.stringify(join(import.meta.dirname, "../../src/server/memory-trim.ts"))};
    import { createSilentLogger } from ${JSON.stringify(join(import.meta.dirname, "../../src/telemetry/logger.ts"))};
    import { getHeapStatistics } from "node:v8";
    const trim = createMemoryTrim({ logger: createSilentLogger() }, { enabled: true, quietMs: 1000, quietUtilization: 1, minGrowthMiB: 16 });
    let junk = [];
    for (let i = 0; i < 96; i++) junk.push(Array.from({ length: 16384 }, (_, j) => ({ i, j })));
    junk = undefined;
    const before = getHeapStatistics().total_heap_size;
    const trimmed = trim.sample();
    console.log(JSON.stringify({ trimmed, before, after: getHeapStatistics().total_heap_size }));
  `;
  const { stdout } = await promisify(execFile)(
    process.execPath,
    ["--expose-gc", "--import", "tsx", "--input-type=module", "-e", script],
    {
      cwd: join(import.meta.dirname, "../.."),
    },
  );
  const r = JSON.parse(stdout) as { trimmed: boolean; before: number; after: number };
  t.true(r.trimmed);
  t.true(r.after < r.before / 2, `heap ${r.before} -> ${r.after} bytes`);
});
