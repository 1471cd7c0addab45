import { execFile } from "node:child_process";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { promisify } from "node:util";
import test from "ava";

const run = promisify(execFile);
const repo = resolve(import.meta.dirname, "../..");
const bin = (name: string) => join(repo, "node_modules/.bin", name);

interface Outcome {
  code: number;
  output: string;
}

// Runs a tool the way `npm run lint` does and reports its exit code and output instead of throwing.
async function lint(cwd: string, command: string, args: string[]): Promise<Outcome> {
  try {
    const { stdout, stderr } = await run(command, args, { cwd, timeout: 60_000 });
    return { code: 0, output: stdout + stderr };
  } catch (err) {
    const e = err as { code?: number; stdout?: string; stderr?: string };
    return { code: typeof e.code === "number" ? e.code : -1, output: (e.stdout ?? "") + (e.stderr ?? "") };
  }
}

// A small src/ tree laid out like the kernel's: a lower layer, two capabilities with an index.ts each,
// and a composition root that imports a capability's internals (allowed there only).
const CLEAN: Record<string, string> = {
  "tsconfig.json": JSON.stringify({ compilerOptions: { module: "nodenext", strict: true }, include: ["src"] }),
  "src/common/index.ts": 'export { now } from "./clock.js";\n',
  "src/common/clock.ts": "export const now = (): number => Date.now();\n",
  "src/alpha/index.ts": 'export { alpha } from "./alpha.js";\n',
  "src/alpha/alpha.ts":
    'import { now } from "../common/index.js";\nimport { helper } from "./helper.js";\n' +
    "export const alpha = (): number => helper(now());\n",
  "src/alpha/helper.ts": "export const helper = (n: number): number => n + 1;\n",
  "src/beta/index.ts": 'export { beta } from "./beta.js";\n',
  "src/beta/beta.ts": 'import { alpha } from "../alpha/index.js";\nexport const beta = (): number => alpha();\n',
  "src/kernel/main.ts":
    'import { helper } from "../alpha/helper.js";\nimport { beta } from "../beta/index.js";\n' +
    "export const main = (): number => helper(beta());\n",
};

async function fixture(t: { teardown(fn: () => Promise<void>): void }, files: Record<string, string>): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), "nops-lint-"));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  for (const [path, text] of Object.entries(files)) {
    await mkdir(dirname(join(dir, path)), { recursive: true });
    await writeFile(join(dir, path), text);
  }
  return dir;
}

const depcruise = (cwd: string) =>
  lint(cwd, bin("depcruise"), ["src", "--config", join(repo, ".dependency-cruiser.cjs"), "--output-type", "err"]);

test("depcruise - the layer rules pass a tree that keeps them", async (t) => {
  const result = await depcruise(await fixture(t, CLEAN));
  t.is(result.code, 0, result.output);
});

test("depcruise - a folder cycle, a reach past an index and an import of the kernel fail the lint", async (t) => {
  const dir = await fixture(t, {
    ...CLEAN,
    // Reach past an index: gamma imports alpha's internal helper.
    "src/gamma/index.ts": 'export { gamma } from "./gamma.js";\n',
    "src/gamma/gamma.ts":
      'import { helper } from "../alpha/helper.js";\nexport const gamma = (): number => helper(1);\n',
    // Folder cycle without a module cycle: beta -> alpha already; alpha's wiring.ts (not in its index) -> beta.
    "src/alpha/wiring.ts": 'import { beta } from "../beta/index.js";\nexport const wiring = (): number => beta();\n',
    // A lower layer importing a capability, and a capability importing the composition root.
    "src/common/clock.ts":
      'import type { gamma } from "../gamma/index.js";\nexport type G = typeof gamma;\n' + CLEAN["src/common/clock.ts"],
    "src/delta/index.ts": 'import { main } from "../kernel/main.js";\nexport const delta = main;\n',
  });
  const result = await depcruise(dir);
  t.not(result.code, 0);
  t.regex(result.output, /only-via-index: src\/gamma\/gamma\.ts → src\/alpha\/helper\.ts/);
  t.regex(result.output, /no-folder-cycle: src\/alpha → \s*src\/beta →\s*src\/alpha/);
  t.notRegex(result.output, /no-module-cycle/);
  t.regex(result.output, /layer-common: src\/common\/clock\.ts → src\/gamma\/index\.ts/);
  t.regex(result.output, /nothing-imports-the-kernel: src\/delta\/index\.ts → src\/kernel\/main\.ts/);
  // The composition root's direct import of alpha/helper.ts is allowed, so it is not reported.
  t.notRegex(result.output, /src\/kernel\/main\.ts → src\/alpha\/helper\.ts/);
});

test("depcruise - only the composition root imports the reference DGE, and only through its entry", async (t) => {
  const dge = "packages/reference-dge/src";
  const clean = {
    ...CLEAN,
    "tsconfig.json": JSON.stringify({ compilerOptions: { module: "nodenext", strict: true }, include: ["src", dge] }),
    [`${dge}/index.ts`]: 'export { serve } from "./server.js";\n',
    [`${dge}/server.ts`]:
      'import { now } from "../../../src/common/index.js";\nexport const serve = (): number => now();\n',
    "src/kernel/dge.ts": `import { serve } from "../../${dge}/index.js";\nexport const start = (): number => serve();\n`,
  };
  const cruise = (cwd: string) =>
    lint(cwd, bin("depcruise"), [
      "src",
      dge,
      "--config",
      join(repo, ".dependency-cruiser.cjs"),
      "--output-type",
      "err",
    ]);
  const ok = await cruise(await fixture(t, clean));
  t.is(ok.code, 0, ok.output);
  const bad = await cruise(
    await fixture(t, {
      ...clean,
      // A capability imports the package, the composition root reaches past its entry, the package reaches
      // into a kernel capability.
      "src/gamma/index.ts": `import { serve } from "../../${dge}/index.js";\nexport const gamma = serve;\n`,
      "src/kernel/dge.ts": `import { serve } from "../../${dge}/server.js";\nexport const start = (): number => serve();\n`,
      [`${dge}/server.ts`]:
        'import { alpha } from "../../../src/alpha/index.js";\nexport const serve = (): number => alpha();\n',
    }),
  );
  t.not(bad.code, 0);
  t.regex(
    bad.output,
    /reference-dge-not-in-capabilities: src\/gamma\/index\.ts → packages\/reference-dge\/src\/index\.ts/,
  );
  t.regex(
    bad.output,
    /reference-dge-only-from-the-kernel: src\/kernel\/dge\.ts → packages\/reference-dge\/src\/server\.ts/,
  );
  t.regex(
    bad.output,
    /reference-dge-uses-only-the-contract-and-common: packages\/reference-dge\/src\/server\.ts → src\/alpha\/index\.ts/,
  );
});

test("prettier - --check fails on unformatted code and passes once it is formatted", async (t) => {
  const dir = await fixture(t, {
    "bad.ts": "export const x = {a:1,\n  b:2}\n",
    "good.ts": "export const x = { a: 1, b: 2 };\n",
  });
  const config = ["--config", join(repo, ".prettierrc.json"), "--check"];
  const bad = await lint(dir, bin("prettier"), [...config, "bad.ts"]);
  t.is(bad.code, 1, bad.output);
  t.regex(bad.output, /bad\.ts/);
  const good = await lint(dir, bin("prettier"), [...config, "good.ts"]);
  t.is(good.code, 0, good.output);
});
