import { brotliCompressSync, deflateRawSync, deflateSync, gzipSync } from "node:zlib";
import { fromBinary } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import test, { type ExecutionContext } from "ava";
import { systemClock } from "../../src/common/clock.js";
import { createDgeClient } from "../../src/clients/dge-client.js";
import { createEgressGuard, resolveEgressGuardOptions } from "../../src/egress/egress-guard.js";
import { createGuardedFetch, MAX_GUARDED_BODY_BYTES } from "../../src/egress/guarded-fetch.js";
import { EgressBlockedSchema } from "../../gen/nops/events/v1/egress_events_pb.js";
import { DGE_KEYS, makeMeter, makeStore, silent, spawnDge } from "../fixtures/dge-helpers.js";

const SSN = "536-22-1234";
const EMAIL = "jane.roe@example.org";
const BASE = "http://127.0.0.1:4318";

/** A guard over a real DGE (gov is tier 3: any finding blocks) and a fetch that records what it was given. */
async function setup(t: ExecutionContext) {
  const dge = await spawnDge(t);
  const store = makeStore();
  const guard = createEgressGuard(
    {
      clock: systemClock,
      logger: silent,
      meter: makeMeter().provider.getMeter("test"),
      dge: createDgeClient(
        { clock: systemClock },
        { url: dge.url, protocol: "grpc", keys: DGE_KEYS, maxSkewMs: 300_000 },
      ),
      events: store.events,
      audit: store.audit,
      db: store.db,
    },
    resolveEgressGuardOptions({ tenantTiers: { gov: 3 }, dgeTimeoutMs: 30_000 }),
  );
  t.teardown(() => guard.close());
  const sent: { url: string; headers: Headers; body: RequestInit["body"] }[] = [];
  const baseFetch = (async (url: string | URL, init: RequestInit = {}) => {
    sent.push({ url: String(url), headers: new Headers(init.headers), body: init.body });
    return new Response("ok");
  }) as typeof fetch;
  const guardedFetch = createGuardedFetch(guard, "observability", baseFetch);
  const post = (body: RequestInit["body"], headers: Record<string, string> = {}, url = `${BASE}/v1/logs`) =>
    guardedFetch(url, { method: "POST", body, headers: { "x-nops-tenant": "gov", ...headers } });
  return { store, guard, sent, post };
}

async function code(t: ExecutionContext, p: Promise<unknown>, label: string): Promise<ConnectError> {
  const err = await t.throwsAsync(p, undefined, label);
  t.true(err instanceof ConnectError, `${label}: ${String(err)}`);
  return ConnectError.from(err);
}

test("guarded fetch - a finding in any body form fetch accepts blocks the request before anything is sent", async (t) => {
  const { post, sent } = await setup(t);
  const text = `applicant ssn ${SSN}`;
  const bytes = new TextEncoder().encode(text);
  const form = new FormData();
  form.append("note", text);
  const fileForm = new FormData();
  fileForm.append("upload", new Blob([bytes], { type: "text/plain" }), "applicant.txt");
  const bodies: [string, RequestInit["body"]][] = [
    ["string", text],
    ["Uint8Array", bytes],
    ["ArrayBuffer", bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength)],
    ["DataView", new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength)],
    ["URLSearchParams (+ and percent-encoded)", new URLSearchParams({ ssn: SSN, email: EMAIL })],
    ["Blob", new Blob([bytes])],
    ["FormData field", form],
    ["FormData file", fileForm],
  ];
  for (const [name, body] of bodies) {
    const e = await code(t, post(body), name);
    t.is(e.code, Code.PermissionDenied, name);
  }
  t.deepEqual(sent, [], "nothing was sent");
  // The same forms without data go out, the body as the caller gave it.
  const clean = new FormData();
  clean.append("status", "ok");
  for (const body of ["status=ok", new Blob(["status=ok"]), clean, new URLSearchParams({ status: "ok" })]) {
    await post(body);
  }
  t.is(sent.length, 4);
  t.true(sent[1]?.body instanceof Blob && sent[2]?.body instanceof FormData);
});

test("guarded fetch - the URL host, path, query and user info are classified in every body mode", async (t) => {
  const { post, sent } = await setup(t);
  const bytes = new TextEncoder().encode("{}");
  const urls: [string, string][] = [
    ["path with bytes body", `${BASE}/v1/users/${SSN}`],
    ["query", `${BASE}/v1/logs?contact=${encodeURIComponent(EMAIL)}`],
    ["query with + for spaces", `${BASE}/v1/logs?ssn=${SSN.replaceAll("-", "+")}`],
    ["percent-encoded path", `${BASE}/v1/${encodeURIComponent(EMAIL)}`],
    ["host", `http://${SSN.replaceAll("-", ".")}.${"ssn"}-${SSN}.example.net/v1/logs`],
    ["user info", `http://${encodeURIComponent(EMAIL)}:x@collector.example.net/v1/logs`],
  ];
  for (const [name, url] of urls) {
    const e = await code(t, post(bytes, { "content-type": "application/octet-stream" }, url), name);
    t.is(e.code, Code.PermissionDenied, name);
  }
  t.deepEqual(sent, []);
  // An IP literal host is where the call goes, not data.
  await post(bytes, {}, "http://10.1.2.3:4318/v1/logs");
  t.is(sent.length, 1);
});

test("guarded fetch - headers are classified; malformed trace headers are dropped, not forwarded", async (t) => {
  const { post, sent } = await setup(t);
  for (const [name, value] of [
    ["x-note", `ssn ${SSN}`],
    ["content-type", `application/json; ref=${SSN}`],
    ["tracestate", `vendor=${EMAIL}`],
  ] as const) {
    const headers: Record<string, string> = { [name]: value };
    if (name === "tracestate") headers.traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    const e = await code(t, post("{}", headers), name);
    t.is(e.code, Code.PermissionDenied, name);
  }
  t.deepEqual(sent, []);
  await post("{}", { traceparent: `00-${SSN}-garbage-01`, tracestate: "vendor=abc" });
  const headers = sent[0]?.headers;
  t.not(headers?.get("traceparent"), `00-${SSN}-garbage-01`);
  t.not(headers?.get("tracestate"), "vendor=abc", "a tracestate without its valid parent is dropped");
});

test("guarded fetch - gzip, deflate and br bodies are decoded before classification; others are refused", async (t) => {
  const { post, sent } = await setup(t);
  const pii = Buffer.from(`{"ssn":"${SSN}"}`);
  for (const [coding, body] of [
    ["gzip", gzipSync(pii)],
    ["x-gzip", gzipSync(pii)],
    ["deflate", deflateSync(pii)],
    ["deflate", deflateRawSync(pii)],
    ["br", brotliCompressSync(pii)],
    ["gzip, br", brotliCompressSync(gzipSync(pii))],
  ] as const) {
    const e = await code(t, post(new Uint8Array(body), { "content-encoding": coding }), coding);
    t.is(e.code, Code.PermissionDenied, coding);
  }
  const zstd = await code(t, post(new Uint8Array(pii), { "content-encoding": "zstd" }), "zstd");
  t.is(zstd.code, Code.InvalidArgument);
  t.regex(zstd.rawMessage, /content-encoding.*"zstd" cannot be decoded/);
  const corrupt = await code(t, post(new Uint8Array([1, 2, 3, 4]), { "content-encoding": "gzip" }), "corrupt");
  t.is(corrupt.code, Code.InvalidArgument);
  t.regex(corrupt.rawMessage, /not valid gzip data/);
  const bomb = await code(
    t,
    post(new Uint8Array(gzipSync(Buffer.alloc(MAX_GUARDED_BODY_BYTES + 1, 0x20))), { "content-encoding": "gzip" }),
    "bomb",
  );
  t.is(bomb.code, Code.ResourceExhausted);
  t.regex(bomb.rawMessage, new RegExp(`larger than ${MAX_GUARDED_BODY_BYTES} bytes`));
  const stream = await code(t, post(new Blob(["x"]).stream()), "stream");
  t.is(stream.code, Code.InvalidArgument);
  t.deepEqual(sent, []);
  const clean = gzipSync(Buffer.from('{"status":"ok"}'));
  await post(new Uint8Array(clean), { "content-encoding": "gzip" });
  t.deepEqual(Buffer.from(sent[0]?.body as Uint8Array), clean, "the encoded body is sent as given");
});

test("guarded fetch - a blocked request's record names the client and scheme, never the URL or header that held data", async (t) => {
  const { post, store } = await setup(t);
  await t.throwsAsync(post("{}", { "content-type": `application/x-${SSN}` }, `${BASE}/v1/users/${SSN}?e=${EMAIL}`));
  await t.throwsAsync(post(`ssn ${SSN}`, { "content-type": "application/json" }));
  const blocked = store.outbox().filter((e) => e.type === "egress.blocked.v1");
  t.deepEqual(
    blocked.map((e) => {
      const d = fromBinary(EgressBlockedSchema, e.payload).decision;
      return [d?.destination, d?.dataType];
    }),
    [
      ["observability:http:", "other"],
      ["observability:http:", "application/json"],
    ],
  );
  const raw = [
    ...blocked.map((e) => Buffer.from(e.payload).toString("latin1")),
    ...store.db
      .prepare<[], Record<string, unknown>>("SELECT * FROM audit_log")
      .all()
      .map((r) => JSON.stringify(r)),
  ].join("\n");
  for (const v of [SSN, EMAIL, "/v1/users"]) t.false(raw.includes(v), v);
});
