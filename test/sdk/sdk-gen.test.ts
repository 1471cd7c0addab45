import { readdirSync, readFileSync } from "node:fs";
import { join, relative } from "node:path";
import test from "ava";

const ROOT = new URL("../../", import.meta.url).pathname;
const COPIED = ["nops/agent", "nops/dge", "nops/events", "nops/kernel", "spiffe"];

function files(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? files(join(dir, e.name)) : [join(dir, e.name)],
  );
}

// The SDK ships its own copy of the generated code (the tarball cannot reach gen/); a proto change
// without `npm run sync-gen -w @nops/agent-sdk` would ship stale contracts.
test("agent sdk - its copy of the generated code is identical to gen/", (t) => {
  const sdkGen = join(ROOT, "packages/agent-sdk/src/gen");
  const expected = COPIED.flatMap((d) => files(join(ROOT, "gen", d))).map((f) => relative(join(ROOT, "gen"), f));
  const actual = files(sdkGen).map((f) => relative(sdkGen, f));
  t.deepEqual(actual.sort(), expected.sort());
  for (const f of expected) {
    t.is(readFileSync(join(sdkGen, f), "utf8"), readFileSync(join(ROOT, "gen", f), "utf8"), f);
  }
});

test("agent sdk - imports nothing from the kernel's src/", (t) => {
  const src = join(ROOT, "packages/agent-sdk/src");
  for (const f of files(src).filter((p) => !p.includes("/gen/"))) {
    const imports = [...readFileSync(f, "utf8").matchAll(/from "([^"]+)"/g)].map((m) => m[1] ?? "");
    t.deepEqual(
      imports.filter((i) => i.startsWith("..")),
      [],
      relative(ROOT, f),
    );
  }
});
