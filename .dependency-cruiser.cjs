// The layers of src/ and the index rule (docs/architecture.md, "Layers"); `npm run lint` fails on any violation.
//
//   common <- store <- server <- telemetry <- capabilities <- kernel
//
// A layer imports only from the layers before it. Capabilities (every other folder) may import each
// other as long as no folder cycle forms. The kernel (src/kernel/ and src/cli.ts) wires everything
// and may import anything; nothing imports it.

/** Folders of the lower layers, lowest first; each may import only the folders before it. */
const LAYERS = ["common", "store", "server", "telemetry"];

const KERNEL = "^src/(kernel/|cli[.]ts$)";

/** The reference DGE, its own workspace package (docs/architecture.md, "The reference DGE"). */
const REFERENCE_DGE = "^packages/reference-dge/";
const REFERENCE_DGE_ENTRY = "^packages/reference-dge/src/index[.]ts$";

/** @type {import('dependency-cruiser').IConfiguration} */
module.exports = {
  forbidden: [
    {
      name: "no-folder-cycle",
      comment: "Folders of src/ form layers: a folder cycle means a type or function sits in the wrong layer.",
      severity: "error",
      scope: "folder",
      from: { path: "^src/[^/]+$" },
      to: { path: "^src/[^/]+$", circular: true },
    },
    {
      name: "no-module-cycle",
      comment: "No circular imports between modules, inside a folder or across folders (DESIGN.md, convention 9).",
      severity: "error",
      from: { path: `^src/|${REFERENCE_DGE}` },
      to: { circular: true },
    },
    {
      name: "reference-dge-only-from-the-kernel",
      comment:
        "The kernel talks to any DGE through the contract (gen/nops/dge/v1) only; the composition root alone " +
        "starts the embedded reference DGE, through the package's public entry, never its internals.",
      severity: "error",
      from: { path: "^src/" },
      to: { path: REFERENCE_DGE, pathNot: REFERENCE_DGE_ENTRY },
    },
    {
      name: "reference-dge-not-in-capabilities",
      comment: "Only the composition root (src/kernel/, src/cli.ts) may import the reference DGE's entry.",
      severity: "error",
      from: { path: "^src/", pathNot: KERNEL },
      to: { path: REFERENCE_DGE },
    },
    {
      name: "reference-dge-uses-only-the-contract-and-common",
      comment:
        "The reference DGE depends on the contract (gen/) and the kernel's common layer (config readers, error " +
        "vocabulary) through its index; nothing else of the kernel.",
      severity: "error",
      from: { path: REFERENCE_DGE },
      to: { path: "^src/", pathNot: "^src/common/index[.]ts$" },
    },
    {
      name: "classifier-only-in-worker-threads",
      comment:
        "The PII classifier (its rules, libphonenumber-js's metadata, the HTML entity tables) is loaded by the " +
        "classification worker threads only; the main thread reads the kinds and the version from pii-kinds.ts.",
      severity: "error",
      from: { path: REFERENCE_DGE, pathNot: "^packages/reference-dge/src/classify-worker[.]ts$" },
      to: { path: "^packages/reference-dge/src/pii-classifier[.]ts$" },
    },
    {
      name: "only-via-index",
      comment:
        "Another folder is imported only through its index.ts (its public surface); " +
        "files inside one folder import each other directly.",
      severity: "error",
      from: { path: "^src/([^/]+)/", pathNot: KERNEL },
      to: { path: "^src/[^/]+/", pathNot: ["^src/$1/", "^src/[^/]+/index[.]ts$"] },
    },
    {
      name: "nothing-imports-the-kernel",
      comment: "The kernel is the composition root: it imports everything, nothing imports it.",
      severity: "error",
      from: { path: "^src/", pathNot: KERNEL },
      to: { path: KERNEL },
    },
    ...LAYERS.map((layer, i) => ({
      name: `layer-${layer}`,
      comment: `src/${layer}/ may import only ${i === 0 ? "packages" : LAYERS.slice(0, i).join(", ")} (lower layers).`,
      severity: "error",
      from: { path: `^src/${layer}/` },
      to: { path: "^src/", pathNot: `^src/(${LAYERS.slice(0, i + 1).join("|")})/` },
    })),
  ],
  options: {
    doNotFollow: { path: "node_modules" },
    exclude: { path: "^(node_modules|gen)/" },
    // Type-only imports count: a cycle through types is still a cycle between layers.
    tsPreCompilationDeps: true,
    tsConfig: { fileName: "tsconfig.json" },
    enhancedResolveOptions: { extensions: [".ts", ".js"] },
  },
};
