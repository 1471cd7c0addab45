import { readdirSync, readFileSync, statSync } from "node:fs";
import { join, relative } from "node:path";
import test from "ava";

const root = new URL("../../", import.meta.url).pathname;

/** Ways of opening an outbound connection. */
const OUTBOUND: { what: string; re: RegExp }[] = [
  { what: "fetch()", re: /(?<![\w.])fetch\s*\(/ },
  {
    what: "http(s).request/get",
    re: /\bhttps?\.(?:request|get)\s*\(|from\s+["']node:https?["'][^;]*\b(?:request|get)\b/,
  },
  {
    what: "http2.connect",
    re: /\bhttp2\.connect\s*\(|\bconnect\s+as\s+\w+\s*\}?\s*from\s+["']node:http2["']|import\s*\{[^}]*\bconnect\b[^}]*\}\s*from\s+["']node:http2["']/,
  },
  {
    what: "net/tls connect",
    re: /\b(?:net|tls)\.(?:connect|createConnection)\s*\(|import\s*\{[^}]*\b(?:connect|createConnection)\b[^}]*\}\s*from\s+["']node:(?:net|tls)["']/,
  },
  {
    what: "grpc-js client",
    re: /new\s+grpc\.Client\b|makeGenericClientConstructor|makeClientConstructor|\bcredentials\.create(?:Insecure|Ssl|FromSecureContext)\b|new\s+Client\s*\(/,
  },
  { what: "connect transport", re: /\bcreate(?:Grpc|Connect|GrpcWeb)Transport\s*\(/ },
  { what: "Redis connection", re: /new\s+(?:IORedis|Redis)\s*\(/ },
  { what: "NATS connection", re: /\b(?:nats\.)?connect\s*\(\s*\{[^)]*servers|from\s+["']@nats-io\/transport-node["']/ },
  { what: "WebSocket", re: /new\s+WebSocket\s*\(/ },
];

/**
 * Local infrastructure allowed to connect without the guard: these never leave the edge host
 * (or, for the routing invoker, must take the guard's pre-send hook). Each entry: path pattern, reason.
 */
const LOCAL_ALLOWLIST: { pattern: RegExp; reason: string }[] = [
  {
    pattern: /^src\/events\/.+\.ts$/,
    reason: "NATS leaf node on the edge host (hub-crossing subjects pass createNatsEgressHook before publish)",
  },
  { pattern: /^src\/ratelimit\/.+\.ts$/, reason: "Redis on the edge host (rate-limit counters)" },
  {
    pattern: /^src\/store\/redis-client\.ts$/,
    reason: "the edge host's Redis (rate limits, nonces, DGE cache) behind a budget and breaker",
  },
  { pattern: /^src\/identity\/spiffe\/.+\.ts$/, reason: "SPIFFE Workload API over a local unix socket" },
  {
    pattern: /^src\/routing\/.+\.ts$/,
    reason:
      "routing invoker: agents on the edge; its one client (agent-h2-client.ts) takes the Egress Guard's " +
      "pre-send hook (createEgressPreSend) as a required dependency and runs it before every call",
  },
  { pattern: /^src\/server\/.+\.ts$/, reason: "listening servers and health probes on loopback, no outbound calls" },
  {
    pattern: /^src\/cli\.ts$/,
    reason: "operator command `audit verify --checkpoint <url>`: a GET of a signed checkpoint, carrying no data",
  },
  {
    pattern: /^src\/kernel\/hub-command\.ts$/,
    reason:
      "operator command `nops-kernel hub set-dge-policy|clear-dge-policy`: publishes the operator's own policy " +
      "command to the hub's NOPS_CMD stream, carrying no tenant data",
  },
  {
    pattern: /^src\/federation\/federation\.ts$/,
    reason:
      "Discover, Handshake and bundle fetches with pinned peers: public descriptors, bundles and proofs, " +
      "no tenant data (docs/federation.md)",
  },
  {
    pattern: /^src\/federation\/peer-routes\.ts$/,
    reason:
      "cross-kernel routes: forwarded Invoke/InvokeStream carry createConnectEgressInterceptor (tenant data is " +
      "guarded); the catalog read carries only the agreement's tenant ids (docs/federation.md)",
  },
  {
    pattern: /^src\/mcp\/upstream-servers\.ts$/,
    reason: "the MCP SDK's Client: its only transport is built on the guarded fetch handed in (deps.fetch)",
  },
  {
    pattern: /^src\/witness\/.+\.ts$/,
    reason: "the hub-side witness reads checkpoints from the hub's JetStream; it runs beside the hub, not on an edge",
  },
  {
    pattern: /^src\/kernel\/start-kernel\.ts$/,
    reason: "wiring: opens the local Redis/NATS connections handed to the components above",
  },
];

/** The approved outbound clients; anything else in src/clients fails. */
const APPROVED_CLIENTS = new Set([
  "observability-client.ts",
  "scorecard-client.ts",
  "billing-client.ts",
  "sandbox-client.ts",
  "compliance-client.ts",
  "inference-client.ts",
  "dge-client.ts",
  "json-http.ts", // shared plumbing of the approved HTTP clients; it builds on the guarded fetch
  "index.ts",
]);

function walk(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const p = join(dir, name);
    return statSync(p).isDirectory() ? walk(p) : p.endsWith(".ts") ? [p] : [];
  });
}

// Comments mention fetch() and friends; only code counts.
function stripComments(src: string): string {
  return src.replace(/\/\*[\s\S]*?\*\//g, "").replace(/(^|[^:"'`])\/\/.*$/gm, "$1");
}

test("boundary - no module outside src/egress/ and src/clients/ opens an outbound connection without the guard", (t) => {
  const offenders: string[] = [];
  for (const file of walk(join(root, "src"))) {
    const rel = relative(root, file);
    if (rel.startsWith("src/egress/") || rel.startsWith("src/clients/")) continue;
    if (LOCAL_ALLOWLIST.some((a) => a.pattern.test(rel))) continue;
    const code = stripComments(readFileSync(file, "utf8"));
    for (const o of OUTBOUND) if (o.re.test(code)) offenders.push(`${rel}: ${o.what}`);
  }
  t.deepEqual(
    offenders,
    [],
    "route these through src/clients (built on the Egress Guard) or add a LOCAL_ALLOWLIST entry with a reason",
  );
});

test("boundary - src/clients holds only approved clients, and each builds its transport through the guard", (t) => {
  const dir = join(root, "src/clients");
  const files = readdirSync(dir).filter((f) => f.endsWith(".ts"));
  t.deepEqual(
    files.filter((f) => !APPROVED_CLIENTS.has(f)),
    [],
    "unapproved client in src/clients",
  );
  for (const f of files) {
    if (f === "index.ts" || f === "dge-client.ts") continue; // dge-client: the guard's own dependency (see its doc comment)
    const code = stripComments(readFileSync(join(dir, f), "utf8"));
    t.regex(
      code,
      /createGuardedFetch|createJsonPost|createEgressPreSend|createConnectEgressInterceptor/,
      `${f} must build its transport through the guard`,
    );
    t.notRegex(
      code,
      /(?<![\w.])fetch\s*\(|create(?:Grpc|Connect)Transport\s*\(/,
      `${f} must not open a connection of its own`,
    );
  }
});

test("boundary - the scanner recognises each kind of outbound connection", (t) => {
  const samples = [
    'await fetch("https://x")',
    "http.request(opts)",
    "http2.connect(url)",
    "net.connect(4222)",
    "tls.connect({})",
    "new grpc.Client(addr, creds)",
    "grpc.makeGenericClientConstructor(def)",
    "createGrpcTransport({ baseUrl })",
    "new Redis(6379)",
    'import { connect } from "@nats-io/transport-node"',
  ];
  for (const s of samples)
    t.true(
      OUTBOUND.some((o) => o.re.test(s)),
      s,
    );
  t.false(
    OUTBOUND.some((o) => o.re.test("const guardedFetch = createGuardedFetch(guard, 'x'); guardedFetch.length")),
    "not an outbound call",
  );
});
