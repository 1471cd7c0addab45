import test, { type ExecutionContext } from "ava";
import { Ajv } from "ajv";
import { execFile } from "node:child_process";
import { mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { parse as parseYaml, parseAllDocuments } from "yaml";
import { resolveKernelOptions } from "../../src/kernel/kernel-options.js";
import { loadKernelOptions } from "../../src/kernel/index.js";
import { encodeVerifierKey, generateSigner } from "../../src/audit/index.js";
import { createTemplateSet, lexTemplate, TemplateError } from "./go-template.js";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
const CHART = join(ROOT, "charts/nops-kernel");
const SPIRE = join(ROOT, "spire");
const NATS_SERVER = "/usr/sbin/nats-server";

type Tree = Record<string, unknown>;
const isMap = (v: unknown): v is Tree => v !== null && typeof v === "object" && !Array.isArray(v);
const readYaml = (path: string): Tree => parseYaml(readFileSync(path, "utf8")) as Tree;

const schema = JSON.parse(readFileSync(join(CHART, "values.schema.json"), "utf8")) as Tree;
const defaults = readYaml(join(CHART, "values.yaml"));
const exampleFiles = readdirSync(join(CHART, "examples")).filter((f) => f.endsWith(".yaml"));
const templateFiles = readdirSync(join(CHART, "templates")).sort();
const templateSources = Object.fromEntries(
  templateFiles.map((f) => [`templates/${f}`, readFileSync(join(CHART, "templates", f), "utf8")]),
);
const chartMeta = readYaml(join(CHART, "Chart.yaml"));

// strict mode makes ajv reject unknown or misplaced keywords in the schema itself. strictRequired is
// off because oneOf/anyOf branches name properties declared one level up (the usual idiom).
const ajv = new Ajv({ allErrors: true, strict: true, strictRequired: false });
const validate = ajv.compile(schema);

/** Merges `override` over `base` the way Helm coalesces values: maps merge, lists and scalars replace, null deletes. */
function helmMerge(base: Tree, override: Tree): Tree {
  const out: Tree = structuredClone(base);
  for (const [key, value] of Object.entries(override)) {
    const current = out[key];
    if (value === null) delete out[key];
    else if (isMap(value) && isMap(current)) out[key] = helmMerge(current, value);
    else out[key] = structuredClone(value);
  }
  return out;
}

function errorsOf(values: Tree): string {
  return validate(values) ? "" : ajv.errorsText(validate.errors, { separator: "\n" });
}

const valueSets: [string, Tree][] = [
  ["values.yaml", defaults],
  ...exampleFiles.map((f): [string, Tree] => [
    `examples/${f}`,
    helmMerge(defaults, readYaml(join(CHART, "examples", f))),
  ]),
];

const templates = createTemplateSet(chartMeta.name as string, templateSources);

function renderRoot(values: Tree): Tree {
  return {
    Values: values,
    Release: { Name: "edge", Namespace: "nops", Service: "Helm" },
    Chart: { Name: chartMeta.name, Version: chartMeta.version, AppVersion: chartMeta.appVersion },
    Template: { BasePath: `${chartMeta.name as string}/templates` },
  };
}

/** Renders every manifest template and returns the parsed Kubernetes objects. */
function renderManifests(values: Tree): Tree[] {
  const objects: Tree[] = [];
  for (const file of templates.files.filter((f) => f.endsWith(".yaml"))) {
    const text = templates.render(file, renderRoot(values));
    for (const doc of parseAllDocuments(text)) {
      if (doc.errors.length > 0)
        throw new Error(`${file} renders invalid YAML: ${doc.errors.map((e) => e.message).join("; ")}\n${text}`);
      const obj = doc.toJS() as unknown;
      if (obj !== null) objects.push(obj as Tree);
    }
  }
  return objects;
}

function find(objects: Tree[], kind: string): Tree {
  const found = objects.find((o) => o.kind === kind);
  if (!found) throw new Error(`no ${kind} rendered`);
  return found;
}

const get = (obj: unknown, path: string): unknown =>
  path
    .split(".")
    .reduce<unknown>(
      (node, key) => (isMap(node) ? node[key] : Array.isArray(node) ? node[Number(key)] : undefined),
      obj,
    );

function containers(sts: Tree): Tree[] {
  return get(sts, "spec.template.spec.containers") as Tree[];
}

function runNatsConfigCheck(conf: string, env: Record<string, string> = {}): Promise<{ code: number; output: string }> {
  const dir = mkdtempSync(join(tmpdir(), "nops-chart-"));
  const file = join(dir, "leaf.conf");
  writeFileSync(file, conf);
  return new Promise((done) => {
    execFile(NATS_SERVER, ["-t", "-c", file], { timeout: 60_000, env }, (err, stdout, stderr) => {
      rmSync(dir, { recursive: true, force: true });
      const code = err ? (typeof err.code === "number" ? err.code : 1) : 0;
      done({ code, output: `${stdout}${stderr}` });
    });
  });
}

/** Writes a self-signed P-256 CA certificate to `file` with the openssl binary. */
function writeSelfSignedCa(file: string, keyFile: string): Promise<void> {
  const args = [
    "req",
    "-x509",
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:P-256",
    "-nodes",
    "-keyout",
    keyFile,
    "-out",
    file,
    "-subj",
    "/CN=hub test CA",
    "-days",
    "2",
  ];
  return new Promise((done, fail) => {
    execFile("openssl", args, { timeout: 60_000 }, (err, _stdout, stderr) =>
      err ? fail(new Error(`openssl failed: ${stderr}`, { cause: err })) : done(),
    );
  });
}

// ---------------------------------------------------------------------------------------------
// values.yaml and values.schema.json

for (const [name, values] of valueSets) {
  test(`values schema - ${name} validates`, (t) => {
    t.is(errorsOf(values), "");
  });
}

test("values schema - every object level is closed with additionalProperties", (t) => {
  const open: string[] = [];
  const walk = (node: unknown, path: string): void => {
    if (Array.isArray(node)) node.forEach((n, i) => walk(n, `${path}[${i}]`));
    if (!isMap(node)) return;
    if (node.type === "object" && node.additionalProperties === undefined) open.push(path || "(root)");
    if (node.additionalProperties === true) open.push(`${path}.additionalProperties`);
    for (const [k, v] of Object.entries(node)) walk(v, `${path}.${k}`);
  };
  walk(schema, "");
  t.deepEqual(open, []);
});

const badOverrides: [string, Tree, RegExp][] = [
  ["a port given as a string", { kernel: { grpcPort: "50051" } }, /grpcPort must be integer/],
  ["an unknown top-level key", { replicas: 2 }, /must NOT have additional properties/],
  [
    "a misspelt nested key",
    { nats: { hub: { credentials: { secretname: "x" } } } },
    /must NOT have additional properties/,
  ],
  ["an edge id with capitals", { edgeId: "Edge-1" }, /edgeId must match pattern/],
  ["a trust domain with a port", { trustDomain: "nops.example:8443" }, /trustDomain must match pattern/],
  [
    "an empty hub credentials secret",
    { nats: { hub: { credentials: { secretName: "" } } } },
    /secretName must NOT have fewer than 1 characters/,
  ],
  [
    "password auth without the hub secret's Secret",
    { nats: { hub: { auth: "password", password: { secretName: "" } } } },
    /secretName must NOT have fewer than 1 characters/,
  ],
  [
    "a hub URL that carries credentials (the chart adds them from the Secret)",
    { nats: { hub: { urls: ["tls://edge-x:secret@hub:7422"] } } },
    /urls\/0 must match pattern/,
  ],
  ["an unknown hub auth", { nats: { hub: { auth: "nkey" } } }, /auth must be equal to one of the allowed values/],
  [
    "an extraEnv item with neither value nor valueFrom",
    { kernel: { extraEnv: [{ name: "NOPS_X" }] } },
    /must match exactly one schema in oneOf/,
  ],
  [
    "a CPU request that is not a quantity",
    { kernel: { resources: { requests: { cpu: "lots" } } } },
    /cpu must match pattern/,
  ],
];

for (const [what, override, expected] of badOverrides) {
  test(`values schema - rejects ${what}`, (t) => {
    t.regex(errorsOf(helmMerge(defaults, override)), expected);
  });
}

test("values schema - helmMerge replaces lists and deletes keys set to null, like Helm", (t) => {
  const merged = helmMerge(defaults, { nats: { hub: { urls: ["tls://a:7422"] } }, podLabels: null });
  t.deepEqual(get(merged, "nats.hub.urls"), ["tls://a:7422"]);
  t.is(get(merged, "nats.hub.port"), 7422);
  t.false("podLabels" in merged);
});

// ---------------------------------------------------------------------------------------------
// templates, statically

test("templates - every action is balanced and every block is closed", (t) => {
  for (const [file, text] of Object.entries(templateSources)) {
    t.notThrows(() => lexTemplate(text, file), file);
  }
  t.notThrows(() => createTemplateSet("nops-kernel", templateSources));
});

test("templates - the balance check rejects broken templates", (t) => {
  t.throws(() => lexTemplate("a: {{ .Values.x }\n", "bad.yaml"), {
    instanceOf: TemplateError,
    message: /never closed/,
  });
  t.throws(() => lexTemplate("a: .Values.x }}\n", "bad.yaml"), {
    instanceOf: TemplateError,
    message: /without "\{\{"/,
  });
  t.throws(() => createTemplateSet("c", { "templates/bad.yaml": "{{- if .Values.a }}\nx: 1\n" }), {
    message: /never closed/,
  });
  t.throws(() => createTemplateSet("c", { "templates/bad.yaml": "x: 1\n{{- end }}\n" }), {
    message: /without an open block/,
  });
});

/** Every `.Values.a.b` chain used inside an action of the templates. */
function valuesReferences(): { file: string; path: string[] }[] {
  const refs: { file: string; path: string[] }[] = [];
  for (const [file, text] of Object.entries(templateSources)) {
    for (const token of lexTemplate(text, file)) {
      if (token.kind !== "action") continue;
      for (const m of token.value.matchAll(/\.Values((?:\.[A-Za-z_]\w*)+)/g)) {
        refs.push({ file, path: (m[1] as string).slice(1).split(".") });
      }
    }
  }
  return refs;
}

test("templates - every .Values reference exists in values.yaml", (t) => {
  const refs = valuesReferences();
  t.true(refs.length > 50, "the reference scan found the chart's references");
  const missing = refs.filter(({ path }) => {
    let node: unknown = defaults;
    for (const key of path) {
      if (!isMap(node) || !(key in node)) return true;
      node = node[key];
    }
    return false;
  });
  t.deepEqual(
    missing.map((r) => `${r.file}: .Values.${r.path.join(".")}`),
    [],
  );
});

test("templates - every value in values.yaml is used by a template", (t) => {
  const used = new Set(valuesReferences().map((r) => r.path.join(".")));
  const unused: string[] = [];
  const walk = (node: unknown, path: string[]): void => {
    const key = path.join(".");
    // A value counts as used when it, or an ancestor, is referenced (e.g. toYaml .Values.kernel.resources).
    if (path.some((_, i) => used.has(path.slice(0, i + 1).join(".")))) return;
    if (isMap(node) && Object.keys(node).length > 0) for (const [k, v] of Object.entries(node)) walk(v, [...path, k]);
    else unused.push(key);
  };
  walk(defaults, []);
  t.deepEqual(unused, []);
});

test("templates - the pod and container security context text is the restricted profile", (t) => {
  const helpers = templateSources["templates/_helpers.tpl"] as string;
  const sts = templateSources["templates/statefulset.yaml"] as string;
  const block = /define "nops-kernel.containerSecurityContext"[\s\S]*?\{\{- end \}\}/.exec(helpers)?.[0] ?? "";
  for (const line of [
    "runAsNonRoot: true",
    "allowPrivilegeEscalation: false",
    "readOnlyRootFilesystem: true",
    "- ALL",
    "type: RuntimeDefault",
  ]) {
    t.true(block.includes(line), `container security context has "${line}"`);
  }
  t.is(sts.match(/include "nops-kernel.containerSecurityContext"/g)?.length, 2, "both containers use it");
  t.regex(sts, /csi:\n\s+driver: \{\{ \.Values\.spiffe\.csiDriver \| quote \}\}\n\s+readOnly: true/);
  t.regex(sts, /- name: spiffe-workload-api\n\s+mountPath: \/spiffe-workload-api\n\s+readOnly: true/);
  t.notRegex(sts, /^\s*grpc:\s*$/m, "no native grpc probe: kubelet cannot present a client certificate");
});

// ---------------------------------------------------------------------------------------------
// templates, rendered

const releaseSigner = generateSigner("nops-kernel-release");
const RELEASE_KEY = encodeVerifierKey(releaseSigner.name, releaseSigner.publicKey);

/** What a Secret referenced by the rendered manifests holds in these tests (never in a manifest). */
const SECRET_VALUE = "hub-link-secret-from-the-secret";

/**
 * A container's environment as Kubernetes gives it: secretKeyRef values read from a Secret (here
 * SECRET_VALUE) and `$(NAME)` references expanded from the variables defined before them.
 */
function containerEnv(container: Tree): Record<string, string> {
  const out: Record<string, string> = {};
  for (const e of (container.env as Tree[] | undefined) ?? []) {
    const name = e.name as string;
    if (get(e, "valueFrom.secretKeyRef")) out[name] = SECRET_VALUE;
    else if (typeof e.value === "string")
      out[name] = e.value.replace(/\$\((\w+)\)/g, (ref, v: string) => out[v] ?? ref);
  }
  return out;
}

/** The NATS leaf sidecar container of the rendered StatefulSet. */
function leafContainer(objects: Tree[]): Tree {
  const c = containers(find(objects, "StatefulSet")).find((x) => x.name === "nats-leaf");
  if (!c) throw new Error("no nats-leaf container rendered");
  return c;
}

/** The kernel container's env entries by name. */
function kernelEnv(objects: Tree[]): Record<string, Tree> {
  const [kernel] = containers(find(objects, "StatefulSet")) as [Tree];
  return Object.fromEntries((kernel.env as Tree[]).map((e): [string, Tree] => [e.name as string, e]));
}

/**
 * The options the kernel resolves from the rendered kernel.yaml and the container's environment,
 * with a release key in the ConfigMap the pod reads NOPS_RELEASE_TRUSTED_KEYS from.
 */
function kernelOptionsOf(t: ExecutionContext, values: Tree) {
  const objects = renderManifests(values);
  const cm = objects.find((o) => isMap(o.data) && "kernel.yaml" in o.data);
  const dir = mkdtempSync(join(tmpdir(), "nops-chart-kernel-"));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  writeFileSync(join(dir, "kernel.yaml"), (cm?.data as Tree)["kernel.yaml"] as string);
  const env = kernelEnv(objects);
  return loadKernelOptions(join(dir, "kernel.yaml"), {
    ...(env.NOPS_RELEASE_TRUSTED_KEYS ? { NOPS_RELEASE_TRUSTED_KEYS: RELEASE_KEY } : {}),
    ...(env.NOPS_NATS_LEAF_LOG_PORT ? { NOPS_NATS_LEAF_LOG_PORT: env.NOPS_NATS_LEAF_LOG_PORT.value as string } : {}),
  });
}

for (const [name, values] of valueSets) {
  test(`rendered chart - ${name} renders valid Kubernetes YAML`, (t) => {
    const objects = renderManifests(values);
    const kinds = objects.map((o) => o.kind).sort();
    const expected = [
      "ClusterSPIFFEID",
      "ConfigMap",
      "ConfigMap",
      "NetworkPolicy",
      "Service",
      "Service",
      "ServiceAccount",
      "StatefulSet",
    ];
    if (get(values, "serviceMonitor.enabled")) expected.push("ServiceMonitor");
    t.deepEqual(kinds, expected.sort());
    for (const o of objects) {
      t.is(typeof o.apiVersion, "string");
      t.regex(get(o, "metadata.name") as string, /^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/);
    }
    t.notThrows(() => templates.render("templates/NOTES.txt", renderRoot(values)));
  });

  test(`rendered chart - ${name}: the pod is restricted and gets the SPIFFE socket read-only`, (t) => {
    const sts = find(renderManifests(values), "StatefulSet");
    t.is(get(sts, "spec.replicas"), 1);
    const pod = get(sts, "spec.template.spec") as Tree;
    t.is(get(pod, "securityContext.runAsNonRoot"), true);
    t.is(get(pod, "securityContext.seccompProfile.type"), "RuntimeDefault");
    t.is(pod.automountServiceAccountToken, false);
    for (const c of containers(sts)) {
      const sc = c.securityContext as Tree;
      t.is(sc.runAsNonRoot, true, `${c.name as string} runAsNonRoot`);
      t.is(sc.readOnlyRootFilesystem, true, `${c.name as string} readOnlyRootFilesystem`);
      t.is(sc.allowPrivilegeEscalation, false, `${c.name as string} allowPrivilegeEscalation`);
      t.deepEqual(get(sc, "capabilities.drop"), ["ALL"]);
      t.is(get(sc, "seccompProfile.type"), "RuntimeDefault");
      t.truthy(get(c, "resources.requests.cpu"), `${c.name as string} has a CPU request`);
      t.truthy(get(c, "resources.requests.memory"), `${c.name as string} has a memory request`);
    }
    const csi = (pod.volumes as Tree[]).find((v) => v.csi);
    t.deepEqual(csi?.csi, { driver: "csi.spiffe.io", readOnly: true });
    const [kernel, nats] = containers(sts) as [Tree, Tree];
    const mount = (kernel.volumeMounts as Tree[]).find((m) => m.name === csi?.name);
    t.deepEqual(mount, { name: "spiffe-workload-api", mountPath: "/spiffe-workload-api", readOnly: true });
    t.false(
      (nats.volumeMounts as Tree[]).some((m) => m.name === csi?.name),
      "the sidecar has no Workload API access",
    );
    const env = Object.fromEntries((kernel.env as Tree[]).map((e): [unknown, unknown] => [e.name, e.value])) as Tree;
    t.is(env.SPIFFE_ENDPOINT_SOCKET, "unix:///spiffe-workload-api/spire-agent.sock");
    t.is(env.NOPS_TRUST_DOMAIN, values.trustDomain);
    t.is(env.NOPS_NATS_URL, "nats://127.0.0.1:4222");
    t.is(kernel.command, undefined, "the image's entrypoint runs the kernel");
    t.deepEqual(kernel.args, ["serve", "--config", "/etc/nops/kernel.yaml"]);
    t.deepEqual(get(kernel, "livenessProbe.httpGet"), { path: "/healthz", port: "http" });
    t.deepEqual(get(kernel, "readinessProbe.httpGet"), { path: "/readyz", port: "http" });
    t.is(get(kernel, "livenessProbe.grpc"), undefined);
    t.deepEqual(
      (get(sts, "spec.volumeClaimTemplates") as Tree[]).map((v) => get(v, "metadata.name")),
      ["data", "jetstream"],
    );
    t.is((get(sts, "spec.template.metadata.labels") as Tree)["nops.dev/edge-id"], values.edgeId);
  });

  test(`rendered chart - ${name}: the NetworkPolicy allows egress only to DNS, the hub and the DGE`, (t) => {
    const objects = renderManifests(values);
    const np = find(objects, "NetworkPolicy");
    const egress = get(np, "spec.egress") as Tree[];
    const extra = (get(values, "networkPolicy.extraEgress") as unknown[]).length;
    t.is(egress.length, 3 + extra);
    const [dns, hub, dge] = egress as [Tree, Tree, Tree];
    t.deepEqual(dns.ports, [
      { port: 53, protocol: "UDP" },
      { port: 53, protocol: "TCP" },
    ]);
    t.deepEqual(hub.ports, [{ port: get(values, "nats.hub.port"), protocol: "TCP" }]);
    t.deepEqual(
      (hub.to as Tree[]).map((p) => get(p, "ipBlock.cidr")),
      get(values, "nats.hub.cidrs"),
    );
    t.deepEqual(dge.ports, [{ port: get(values, "dge.egress.port"), protocol: "TCP" }]);
    const dgePeers = (dge.to as Tree[]).flatMap((p) => [
      get(p, "ipBlock.cidr"),
      get(p, "namespaceSelector.matchLabels"),
      get(p, "podSelector.matchLabels"),
    ]);
    const expectedPeers = [
      ...(get(values, "dge.egress.cidrs") as string[]).flatMap((c) => [c, undefined, undefined]),
      ...(get(values, "dge.egress.namespaceSelector") || get(values, "dge.egress.podSelector")
        ? [undefined, get(values, "dge.egress.namespaceSelector"), get(values, "dge.egress.podSelector")]
        : []),
    ].map((x) => (isMap(x) && Object.keys(x).length === 0 ? undefined : x));
    t.deepEqual(dgePeers, expectedPeers);
    for (const rule of egress)
      t.true(Array.isArray(rule.to) && rule.to.length > 0, "no egress rule is open to every destination");
    const ingressPorts = (get(np, "spec.ingress.0.ports") as Tree[]).map((p) => p.port);
    t.deepEqual(ingressPorts, ["grpc", "http"]);
    t.deepEqual(
      get(np, "spec.podSelector.matchLabels"),
      get(find(objects, "StatefulSet"), "spec.selector.matchLabels"),
    );
  });

  test(`rendered chart - ${name}: the ClusterSPIFFEID names the kernel by its edge id`, (t) => {
    const objects = renderManifests(values);
    const id = find(objects, "ClusterSPIFFEID");
    t.is(
      get(id, "spec.spiffeIDTemplate"),
      'spiffe://{{ .TrustDomain }}/nops/kernel/{{ index .PodMeta.Labels "nops.dev/edge-id" }}',
    );
    t.deepEqual(
      get(id, "spec.podSelector.matchLabels"),
      get(find(objects, "StatefulSet"), "spec.selector.matchLabels"),
    );
    t.deepEqual(get(id, "spec.workloadSelectorTemplates"), ["k8s:container-name:kernel"]);
    t.deepEqual(get(id, "spec.namespaceSelector.matchLabels"), { "kubernetes.io/metadata.name": "nops" });
  });

  test(`rendered chart - ${name}: kernel.yaml is accepted by the kernel's options resolver`, (t) => {
    const options = kernelOptionsOf(t, values);
    t.is(options.edgeId, values.edgeId as string);
    t.is(options.databasePath, "/var/lib/nops/data/kernel.db");
    // The audit key is writable (on the data volume, the root filesystem is read-only) and outside the data directory.
    t.is(options.audit.keyFile, "/var/lib/nops/data.keys/audit-checkpoint.key");
    t.deepEqual(options.grpc, { host: "0.0.0.0", port: get(values, "kernel.grpcPort") });
    t.deepEqual(options.http, { host: "0.0.0.0", port: get(values, "kernel.httpPort") });
    t.is(options.limits.maxMessageBytes, get(values, "kernel.limits.maxMessageBytes") as number);
    t.is(
      options.nats.leafLogPort,
      get(values, "nats.kernelLogPort") as number,
      "the kernel listens where the leaf logs",
    );
  });

  test(`rendered chart - ${name}: the leaf sidecar links to every hub URL with this edge's hub credentials`, (t) => {
    const objects = renderManifests(values);
    const leaf = leafContainer(objects);
    const env = containerEnv(leaf);
    const urls = JSON.parse(env.NOPS_HUB_LEAF_URLS ?? "null") as string[];
    const hubUrls = get(values, "nats.hub.urls") as string[];
    const mounts = (leaf.volumeMounts as Tree[]).map((m) => m.name);
    const volumes = (get(find(objects, "StatefulSet"), "spec.template.spec.volumes") as Tree[]).map((v) => v.name);
    if (get(values, "nats.hub.auth") === "password") {
      const user = (get(values, "nats.hub.password.user") as string) || `edge-${values.edgeId as string}`;
      t.deepEqual(
        urls,
        hubUrls.map((u) => u.replace("://", `://${user}:${SECRET_VALUE}@`)),
        "each hub node's URL carries the edge's user and the Secret's value",
      );
      const ref = get(
        (leaf.env as Tree[]).find((e) => e.name === "NOPS_HUB_SECRET"),
        "valueFrom.secretKeyRef",
      );
      t.deepEqual(ref, {
        name: get(values, "nats.hub.password.secretName"),
        key: get(values, "nats.hub.password.key"),
      });
      t.false(mounts.includes("leaf-creds") || volumes.includes("leaf-creds"), "no credentials file with a password");
    } else {
      t.deepEqual(urls, hubUrls);
      t.true(mounts.includes("leaf-creds") && volumes.includes("leaf-creds"));
    }
    const port = get(values, "nats.kernelLogPort") as number;
    const command = leaf.command as string[];
    if (port > 0) t.deepEqual(command.slice(-3), ["-D", "-r", `udp://127.0.0.1:${port}`]);
    else t.false(command.includes("-r"));
  });

  test(`rendered chart - ${name}: leaf.conf passes nats-server -t`, async (t) => {
    const cm = renderManifests(values).find((o) => isMap(o.data) && "leaf.conf" in o.data);
    let conf = (cm?.data as Tree)["leaf.conf"] as string;
    if (get(values, "nats.hub.auth") === "creds") t.regex(conf, /credentials: "\/etc\/nats\/creds\/leaf\.creds"/);
    else t.notRegex(conf, /credentials:/);
    t.regex(conf, /urls: \$NOPS_HUB_LEAF_URLS/);
    if (conf.includes("/etc/nats/hub-ca/ca.crt")) {
      // nats-server -t loads the CA file: give it a real certificate in place of the Secret mount.
      const dir = mkdtempSync(join(tmpdir(), "nops-chart-ca-"));
      t.teardown(() => rmSync(dir, { recursive: true, force: true }));
      await writeSelfSignedCa(join(dir, "ca.crt"), join(dir, "ca.key"));
      conf = conf.replace("/etc/nats/hub-ca/ca.crt", join(dir, "ca.crt"));
    }
    // With the sidecar's environment, as the container runs it (the URLs come from there).
    const { code, output } = await runNatsConfigCheck(conf, containerEnv(leafContainer(renderManifests(values))));
    t.is(code, 0, output);
    t.regex(output, /is valid/);
    t.regex(
      conf,
      new RegExp(`domain: "${(get(values, "nats.jetstream.domain") as string) || (values.edgeId as string)}"`),
    );
  });
}

test("rendered chart - nats-server -t rejects a broken leaf.conf (the check can fail)", async (t) => {
  const cm = renderManifests(defaults).find((o) => isMap(o.data) && "leaf.conf" in o.data);
  const conf = ((cm?.data as Tree)["leaf.conf"] as string).replace("jetstream {", "jetstream {{");
  const env = containerEnv(leafContainer(renderManifests(defaults)));
  t.is((await runNatsConfigCheck((cm?.data as Tree)["leaf.conf"] as string, env)).code, 0, "unbroken, it passes");
  const { code } = await runNatsConfigCheck(conf, env);
  t.not(code, 0);
});

test("rendered chart - large numbers are rendered as integers, not Helm's float exponent form", (t) => {
  const values = helmMerge(defaults, { nats: { jetstream: { maxFileStore: 42949672960 } } });
  const cm = renderManifests(values).find((o) => isMap(o.data) && "leaf.conf" in o.data);
  t.regex((cm?.data as Tree)["leaf.conf"] as string, /max_file_store: 42949672960\n/);
  // The renderer reproduces Go's %v for float64, so a template without `| int64` would show here.
  const raw = createTemplateSet("c", { "templates/x.yaml": "n: {{ .Values.n }}" }).render("templates/x.yaml", {
    Values: { n: 42949672960 },
  });
  t.is(raw, "n: 4.294967296e+10");
});

test("rendered chart - a DGE egress rule without any destination fails the render", (t) => {
  const values = helmMerge(defaults, { dge: { egress: { cidrs: [], namespaceSelector: null, podSelector: null } } });
  t.is(errorsOf(values), "", "the schema allows it; the template must catch it");
  t.throws(() => renderManifests(values), { instanceOf: TemplateError, message: /dge\.egress needs cidrs/ });
});

test("rendered chart - release enforcement is on by default, with the keys from a ConfigMap", (t) => {
  const objects = renderManifests(defaults);
  t.regex((find(objects, "ConfigMap").data as Tree)["kernel.yaml"] as string, /release:\n\s+enforce: true\n/);
  t.deepEqual(get(kernelEnv(objects).NOPS_RELEASE_TRUSTED_KEYS, "valueFrom.configMapKeyRef"), {
    name: "edge-nops-kernel-release-keys",
    key: "keys",
  });
  const options = kernelOptionsOf(t, defaults);
  t.true(options.release.enforce);
  t.deepEqual(
    options.release.trustedKeys.map((k) => k.name),
    ["nops-kernel-release"],
  );
  // Without the keys the kernel refuses the config: enforcement cannot be on with nothing trusted.
  const cm = objects.find((o) => isMap(o.data) && "kernel.yaml" in o.data);
  t.throws(() => resolveKernelOptions(parseYaml((cm?.data as Tree)["kernel.yaml"] as string)), {
    message: /release\.trustedKeys must list at least one key/,
  });
});

test("rendered chart - inline release keys go into kernel.yaml; enforce off needs none", (t) => {
  const inline = helmMerge(defaults, { release: { trustedKeys: [RELEASE_KEY] } });
  t.is(errorsOf(inline), "");
  t.false("NOPS_RELEASE_TRUSTED_KEYS" in kernelEnv(renderManifests(inline)));
  t.is(kernelOptionsOf(t, inline).release.trustedKeys.length, 1);
  const off = helmMerge(defaults, { release: { enforce: false } });
  t.false("NOPS_RELEASE_TRUSTED_KEYS" in kernelEnv(renderManifests(off)));
  t.false(kernelOptionsOf(t, off).release.enforce);
  t.regex(
    errorsOf(helmMerge(defaults, { release: { trustedKeys: ["not a key"] } })),
    /trustedKeys\/0 must match pattern/,
  );
});

test("rendered chart - the ServiceMonitor is rendered only when enabled and scrapes /metrics", (t) => {
  t.false(renderManifests(defaults).some((o) => o.kind === "ServiceMonitor"));
  const objects = renderManifests(helmMerge(defaults, { serviceMonitor: { enabled: true } }));
  const sm = find(objects, "ServiceMonitor");
  t.like(get(sm, "spec.endpoints.0"), { port: "http", path: "/metrics" });
  const httpService = objects.find(
    (o) => o.kind === "Service" && (get(o, "metadata.labels") as Tree)["app.kubernetes.io/component"] === "http",
  );
  t.truthy(httpService, "the ServiceMonitor's selector matches the HTTP Service");
});

// ---------------------------------------------------------------------------------------------
// spire/

const spireYaml = readdirSync(SPIRE).filter((f) => f.endsWith(".yaml"));

test("spire manifests - every YAML file parses and is a spire-controller-manager resource", (t) => {
  t.true(spireYaml.length >= 3);
  for (const file of spireYaml) {
    const docs = parseAllDocuments(readFileSync(join(SPIRE, file), "utf8"));
    for (const doc of docs) {
      t.deepEqual(doc.errors, [], file);
      const obj = doc.toJS() as Tree;
      t.is(obj.apiVersion, "spire.spiffe.io/v1alpha1", file);
      t.true(["ClusterSPIFFEID", "ClusterFederatedTrustDomain"].includes(obj.kind as string), file);
    }
  }
});

test("spire manifests - the kernel and agent ClusterSPIFFEIDs follow the SPIFFE ID scheme", (t) => {
  const kernel = readYaml(join(SPIRE, "cluster-spiffeid-kernel.yaml"));
  const agents = readYaml(join(SPIRE, "cluster-spiffeid-agents.yaml"));
  t.is(
    get(kernel, "spec.spiffeIDTemplate"),
    'spiffe://{{ .TrustDomain }}/nops/kernel/{{ index .PodMeta.Labels "nops.dev/edge-id" }}',
  );
  t.is(
    get(agents, "spec.spiffeIDTemplate"),
    'spiffe://{{ .TrustDomain }}/nops/tenant/{{ index .PodMeta.Labels "nops.dev/tenant" }}/agent/{{ .PodSpec.ServiceAccountName }}',
  );
  t.deepEqual(get(agents, "spec.podSelector.matchLabels"), { "nops.dev/agent": "true" });
  t.deepEqual(get(agents, "spec.podSelector.matchExpressions"), [{ key: "nops.dev/tenant", operator: "Exists" }]);
  // The spire/ templates are Go templates too (rendered by the controller): check their actions balance.
  for (const file of spireYaml) t.notThrows(() => lexTemplate(readFileSync(join(SPIRE, file), "utf8"), file));
});

test("spire config - server and agent use k8s_psat with matching cluster names and the CSI socket name", (t) => {
  const server = readFileSync(join(SPIRE, "server.conf"), "utf8");
  const agent = readFileSync(join(SPIRE, "agent.conf"), "utf8");
  t.regex(server, /NodeAttestor "k8s_psat"/);
  t.regex(agent, /NodeAttestor "k8s_psat"/);
  t.regex(agent, /WorkloadAttestor "k8s"/);
  const serverCluster = /clusters = \{\s*"([^"]+)"/.exec(server)?.[1];
  const agentCluster = /cluster\s+= "([^"]+)"/.exec(agent)?.[1];
  t.truthy(serverCluster);
  t.is(agentCluster, serverCluster);
  t.is(/trust_domain\s*= "([^"]+)"/.exec(agent)?.[1], /trust_domain\s*= "([^"]+)"/.exec(server)?.[1]);
  t.regex(agent, new RegExp(`socket_path\\s*= "[^"]*/${get(defaults, "spiffe.socketName") as string}"`));
  for (const text of [server, agent]) {
    let depth = 0;
    for (const c of text.replace(/"(?:[^"\\]|\\.)*"/g, "").replace(/#.*$/gm, "")) {
      if (c === "{") depth++;
      if (c === "}") depth--;
      t.true(depth >= 0);
    }
    t.is(depth, 0, "HCL braces balance");
  }
});
