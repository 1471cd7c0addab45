import { mkdirSync, mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";

/**
 * A small installed kernel tree: built code, contracts, a production dependency and a development
 * dependency (which is not part of a release), with a lock file `npm ls` reads offline.
 */
export function makeKernelTree(): string {
  const root = mkdtempSync(join(tmpdir(), "nops-release-"));
  const files: Record<string, string> = {
    "package.json": JSON.stringify({
      name: "nops-kernel",
      version: "0.0.1",
      dependencies: { dep: "1.0.0" },
      devDependencies: { devdep: "1.0.0" },
    }),
    "package-lock.json": JSON.stringify({
      name: "nops-kernel",
      version: "0.0.1",
      lockfileVersion: 3,
      requires: true,
      packages: {
        "": {
          name: "nops-kernel",
          version: "0.0.1",
          dependencies: { dep: "1.0.0" },
          devDependencies: { devdep: "1.0.0" },
        },
        "node_modules/dep": { version: "1.0.0", license: "MIT" },
        "node_modules/devdep": { version: "1.0.0", dev: true, license: "MIT" },
      },
    }),
    "node_modules/dep/package.json": JSON.stringify({ name: "dep", version: "1.0.0", license: "MIT" }),
    "node_modules/dep/index.js": "module.exports = 1;\n",
    "node_modules/devdep/package.json": JSON.stringify({ name: "devdep", version: "1.0.0", license: "MIT" }),
    "node_modules/devdep/index.js": "module.exports = 2;\n",
    "dist/src/cli.js": "console.log('kernel');\n",
    "dist/gen/contract_pb.js": "export {};\n",
    "proto/nops/kernel/v1/x.proto": 'syntax = "proto3";\n',
  };
  for (const [rel, text] of Object.entries(files)) {
    mkdirSync(dirname(join(root, rel)), { recursive: true });
    writeFileSync(join(root, rel), text);
  }
  return root;
}
