import * as http2 from "node:http2";
import * as net from "node:net";
import test from "ava";
import { Health, HealthCheckResponse_ServingStatus as Serving } from "../../gen/grpc/health/v1/health_pb.js";
import { DEFAULT_KERNEL_OPTIONS } from "../../src/kernel/kernel-options.js";
import { bindService } from "../../src/server/bind-service.js";
import { createHttpServer, type HttpRoute } from "../../src/server/http-server.js";
import { createTestCa } from "../helpers/test-ca.js";

const PERIMETER = {
  "x-content-type-options": "nosniff",
  "content-security-policy": "frame-ancestors 'none'",
  "referrer-policy": "no-referrer",
  "cache-control": "no-store",
};

async function start(t: { teardown(fn: () => Promise<void>): void }, tls?: http2.SecureServerOptions) {
  const bound = bindService(
    Health,
    {
      check: () => {
        // What an unmapped bug looks like: the message must not reach the caller.
        throw new Error("secret internal detail at /srv/kernel/src/x.ts:12");
      },
      async *watch() {
        yield { status: Serving.SERVING };
      },
    },
    [],
  );
  const routes: Record<string, HttpRoute> = {
    "/healthz": (_req, res) => {
      res.writeHead(200, { "content-type": "application/json" });
      res.end("{}");
    },
  };
  const server = createHttpServer({ services: [bound], routes, limits: DEFAULT_KERNEL_OPTIONS.limits, tls });
  const port = await server.listen("127.0.0.1", 0);
  t.teardown(() => server.shutdown(100));
  return port;
}

const CHECK = "/grpc.health.v1.Health/Check";

test("http server - every response, errors and 404/405/415 included, carries the perimeter headers and x-request-id", async (t) => {
  const port = await start(t);
  const base = `http://127.0.0.1:${port}`;
  const responses = {
    ok: await fetch(`${base}/healthz`),
    notFound: await fetch(`${base}/nope`),
    methodNotAllowed: await fetch(`${base}${CHECK}`, { method: "PUT" }),
    unsupported: await fetch(`${base}${CHECK}`, {
      method: "POST",
      headers: { "content-type": "text/plain" },
      body: "x",
    }),
    rpcError: await fetch(`${base}${CHECK}`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: "{}",
    }),
  };
  t.is(responses.ok.status, 200);
  t.is(responses.notFound.status, 404);
  t.is(responses.methodNotAllowed.status, 405);
  t.is(responses.unsupported.status, 415);
  t.is(responses.rpcError.status, 500);
  for (const [name, res] of Object.entries(responses)) {
    for (const [header, value] of Object.entries(PERIMETER)) t.is(res.headers.get(header), value, `${name}: ${header}`);
    t.regex(res.headers.get("x-request-id") ?? "", /^[0-9a-f-]{36}$/, `${name}: x-request-id`);
    t.is(res.headers.get("strict-transport-security"), null, "no HSTS over plaintext");
  }
  t.deepEqual(await responses.notFound.json(), { code: "unimplemented", message: "no route for GET /nope" });
  // The caller's id is echoed when it is safe, replaced when it is not.
  const echoed = await fetch(`${base}/nope`, { headers: { "x-request-id": "caller-1" } });
  t.is(echoed.headers.get("x-request-id"), "caller-1");
  const replaced = await fetch(`${base}/nope`, { headers: { "x-request-id": "<script>" } });
  t.not(replaced.headers.get("x-request-id"), "<script>");
});

test("http server - an internal error carries neither its message nor a stack, only the request id", async (t) => {
  const port = await start(t);
  const res = await fetch(`http://127.0.0.1:${port}${CHECK}`, {
    method: "POST",
    headers: { "content-type": "application/json", "x-request-id": "req-77" },
    body: "{}",
  });
  const body = (await res.json()) as { code: string; message: string };
  t.deepEqual(body, { code: "internal", message: "internal error (request req-77)" });
});

test("http server - a body that is not protobuf is INVALID_ARGUMENT in every protocol; JSON that is not UTF-8 is rejected", async (t) => {
  const port = await start(t);
  const base = `http://127.0.0.1:${port}${CHECK}`;
  const garbage = Buffer.from([0xff, 0xff, 0xff]);
  const connect = await fetch(base, {
    method: "POST",
    headers: { "content-type": "application/proto" },
    body: garbage,
  });
  t.is(connect.status, 400);
  t.deepEqual(await connect.json(), {
    code: "invalid_argument",
    message: "request: cannot decode grpc.health.v1.HealthCheckRequest",
  });
  const framed = Buffer.concat([Buffer.from([0, 0, 0, 0, 3]), garbage]);
  const grpcWeb = await fetch(base, {
    method: "POST",
    headers: { "content-type": "application/grpc-web+proto" },
    body: framed,
  });
  const grpcWebText =
    Buffer.from(await grpcWeb.arrayBuffer()).toString("latin1") + JSON.stringify([...grpcWeb.headers]);
  t.regex(grpcWebText, /grpc-status"?[:,]\s*"?3/);
  t.notRegex(grpcWebText, /premature|parse binary/);

  // gRPC over the HTTP port (HTTP/2 with prior knowledge).
  const session = http2.connect(`http://127.0.0.1:${port}`);
  t.teardown(() => void session.close());
  const stream = session.request({
    ":method": "POST",
    ":path": CHECK,
    "content-type": "application/grpc",
    te: "trailers",
  });
  const trailers = new Promise<http2.IncomingHttpHeaders>((resolve) => {
    stream.on("response", (h) => {
      if (h["grpc-status"] !== undefined) resolve(h);
    });
    stream.on("trailers", resolve);
  });
  stream.on("data", () => undefined);
  stream.end(framed);
  t.is((await trailers)["grpc-status"], "3");

  const notUtf8 = Buffer.concat([Buffer.from('{"service":"'), Buffer.from([0xc3, 0x28]), Buffer.from('"}')]);
  const json = await fetch(base, { method: "POST", headers: { "content-type": "application/json" }, body: notUtf8 });
  t.is(json.status, 400);
  t.is(((await json.json()) as { code: string }).code, "invalid_argument");
});

test("http server - an HTTP/1.0 request without Host is a 400, not a crash", async (t) => {
  const port = await start(t);
  const socket = net.connect(port, "127.0.0.1");
  socket.write(`POST ${CHECK} HTTP/1.0\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}`);
  let text = "";
  socket.on("data", (d: Buffer) => (text += d.toString()));
  await new Promise((resolve) => socket.once("close", resolve));
  t.regex(text, /^HTTP\/1\.[01] 400/);
  t.regex(text, /"code":"invalid_argument"/);
  t.is((await fetch(`http://127.0.0.1:${port}/healthz`)).status, 200, "still serving");
});

test("http server - over TLS every response carries HSTS", async (t) => {
  const ca = await createTestCa("perimeter.test");
  const svid = await ca.issue({ spiffeId: "spiffe://perimeter.test/kernel", dnsNames: ["localhost"] });
  const port = await start(t, { cert: svid.certPem, key: svid.keyPem, ca: ca.certPem, requestCert: false });
  const session = http2.connect(`https://localhost:${port}`, { ca: ca.certPem, rejectUnauthorized: false });
  t.teardown(() => void session.close());
  for (const path of ["/healthz", "/nope"]) {
    const req = session.request({ ":path": path });
    const headers = await new Promise<http2.IncomingHttpHeaders>((resolve) => req.once("response", resolve));
    req.resume();
    t.is(headers["strict-transport-security"], "max-age=31536000", path);
    t.is(headers["x-content-type-options"], "nosniff", path);
  }
});
