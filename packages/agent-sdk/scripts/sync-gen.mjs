// Copies the kernel's generated code the SDK needs into src/gen, so the package builds and ships
// on its own (the published tarball cannot reach the repository's gen/). test/sdk checks the copy
// is identical to gen/; run `npm run sync-gen -w @nops/agent-sdk` after `npm run generate`.
import { cpSync, rmSync } from "node:fs";
import { fileURLToPath } from "node:url";

const root = fileURLToPath(new URL("../../../gen/", import.meta.url));
const out = fileURLToPath(new URL("../src/gen/", import.meta.url));
// nops/dge: the events package's hub commands carry DGE policy types.
const DIRS = ["nops/agent", "nops/dge", "nops/events", "nops/kernel", "spiffe"];

rmSync(out, { recursive: true, force: true });
for (const dir of DIRS) cpSync(root + dir, out + dir, { recursive: true });
