import test, { type ExecutionContext } from "ava";
import * as http2 from "node:http2";
import type { AddressInfo } from "node:net";
import * as grpc from "@grpc/grpc-js";
import { Code } from "@connectrpc/connect";
import { systemClock } from "../../src/common/clock.js";
import { createTlsMaterial } from "../../src/identity/spiffe/tls-material.js";
import {
  AgentCallError,
  codeOfHttpStatus,
  createAgentH2Client,
  decodeGrpcMessage,
  grpcTimeout,
  type AgentH2Client,
  type AgentH2ClientDeps,
  type H2CallOptions,
} from "../../src/routing/agent-h2-client.js";
import { createSilentLogger } from "../../src/telemetry/logger.js";
import { createTestCa } from "../helpers/test-ca.js";
import { freePort, waitFor } from "../helpers/processes.js";
import { contextOf, createStaticSource } from "../identity/spiffe/support.js";

const logger = createSilentLogger();
const raw = (b: Uint8Array): Buffer => Buffer.from(b);
const text = (s: string): Uint8Array => new TextEncoder().encode(s);
const str = (b: Uint8Array): string => new TextDecoder().decode(b);
const same = (b: Uint8Array): Uint8Array => b;

/** What the test server saw. */
interface Seen {
  calls: number;
  cancelled: number;
  metadata: Record<string, string>[];
  deadlines: number[];
}

const method = (path: string, responseStream = false) => ({
  path,
  requestStream: false,
  responseStream,
  requestSerialize: raw,
  requestDeserialize: (b: Buffer) => b,
  responseSerialize: raw,
  responseDeserialize: (b: Buffer) => b,
});
const SERVICE = {
  echo: method("/t.T/Echo"),
  hang: method("/t.T/Hang"),
  fail: method("/t.T/Fail"),
  stream: method("/t.T/Stream", true),
} satisfies grpc.ServiceDefinition;

/** A grpc-js server on loopback: Echo, Hang (never answers), Fail (status from the request), Stream. */
async function startServer(
  t: ExecutionContext,
  o: { port?: number; credentials?: grpc.ServerCredentials; maxSend?: number } = {},
): Promise<{ port: number; seen: Seen; server: grpc.Server }> {
  const seen: Seen = { calls: 0, cancelled: 0, metadata: [], deadlines: [] };
  const server = new grpc.Server({ "grpc.max_send_message_length": o.maxSend ?? -1 });
  const record = (call: grpc.ServerUnaryCall<Buffer, Buffer> | grpc.ServerWritableStream<Buffer, Buffer>) => {
    seen.calls++;
    const md: Record<string, string> = {};
    for (const [k, v] of Object.entries(call.metadata.getMap())) md[k] = String(v);
    seen.metadata.push(md);
    const d = call.getDeadline();
    seen.deadlines.push(d instanceof Date ? d.getTime() : d);
    call.on("cancelled", () => seen.cancelled++);
  };
  server.addService(SERVICE, {
    echo: (call: grpc.ServerUnaryCall<Buffer, Buffer>, cb: grpc.sendUnaryData<Buffer>) => {
      record(call);
      const ask = /^size (\d+)$/.exec(call.request.toString("latin1", 0, 20));
      cb(null, ask ? Buffer.alloc(Number(ask[1]), 7) : call.request);
    },
    hang: (call: grpc.ServerUnaryCall<Buffer, Buffer>) => record(call),
    fail: (call: grpc.ServerUnaryCall<Buffer, Buffer>, cb: grpc.sendUnaryData<Buffer>) => {
      record(call);
      cb({ code: grpc.status.NOT_FOUND, details: call.request.toString() });
    },
    stream: (call: grpc.ServerWritableStream<Buffer, Buffer>) => {
      record(call);
      const [n, size] = call.request.toString().split(" ").map(Number);
      // Writes honour the stream's backpressure, so a slow reader holds the server through flow control.
      let i = 0;
      const more = (): void => {
        while (i < n!) {
          const chunk = Buffer.alloc(size!, i % 256);
          i++;
          if (!call.write(chunk)) return void call.once("drain", more);
        }
        call.end();
      };
      more();
    },
  });
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync(`127.0.0.1:${o.port ?? 0}`, o.credentials ?? grpc.ServerCredentials.createInsecure(), (e, p) =>
      e ? reject(e) : resolve(p),
    ),
  );
  t.teardown(() => server.forceShutdown());
  return { port, seen, server };
}

function client(
  t: ExecutionContext,
  target: string,
  deps: Partial<AgentH2ClientDeps> = {},
  o: Partial<{ sessions: number; maxMessageBytes: number; maxReconnectBackoffMs: number }> = {},
): AgentH2Client {
  const c = createAgentH2Client(
    { target, preSend: () => undefined, clock: systemClock, logger, ...deps },
    { sessions: 2, maxMessageBytes: 4 << 20, maxReconnectBackoffMs: 1000, ...o },
  );
  t.teardown(() => c.destroy());
  return c;
}

// Generous: the machine is shared and a deadline must not decide a test that is not about deadlines.
const opts = (extra: Partial<H2CallOptions> = {}): H2CallOptions => ({
  deadline: Date.now() + 120_000,
  headers: {},
  signal: new AbortController().signal,
  ...extra,
});
const unary = (c: AgentH2Client, path: string, body: Uint8Array, o: H2CallOptions = opts()) =>
  c.unary(path, body, same, same, o);
const failure = async (p: Promise<unknown>): Promise<AgentCallError> => {
  const e = await p.then(
    () => undefined,
    (err: unknown) => err,
  );
  if (!(e instanceof AgentCallError)) throw new Error(`expected an AgentCallError, got ${String(e)}`);
  return e;
};

test("agent h2 client - unary call carries the headers and grpc-timeout; answers decode", async (t) => {
  const s = await startServer(t);
  const c = client(t, `127.0.0.1:${s.port}`);
  const deadline = Date.now() + 5_000;
  const answer = await unary(
    c,
    "/t.T/Echo",
    text("hello"),
    opts({ deadline, headers: { traceparent: "00-x", "x-nops-tenant": "t1" } }),
  );
  t.is(str(answer), "hello");
  t.like(s.seen.metadata[0], { traceparent: "00-x", "x-nops-tenant": "t1" });
  // grpc-timeout is relative and re-anchored on receipt: the server's deadline is the client's plus
  // the transit time (seconds on a loaded machine), never earlier, and not absent (Infinity).
  const seenDeadline = s.seen.deadlines[0]!;
  t.true(seenDeadline >= deadline - 5 && seenDeadline < deadline + 60_000, `${seenDeadline - deadline} ms`);
  t.true(c.connected());
});

test("agent h2 client - the deadline ends the call DEADLINE_EXCEEDED and the server sees it cancelled", async (t) => {
  const s = await startServer(t);
  const c = client(t, `127.0.0.1:${s.port}`);
  const err = await failure(unary(c, "/t.T/Hang", text("x"), opts({ deadline: Date.now() + 3_000 })));
  t.is(err.code, Code.DeadlineExceeded);
  t.is(s.seen.calls, 1);
  t.true(err.delivered, "the request was on the wire when the deadline passed");
  await waitFor(() => s.seen.cancelled === 1, "the server to see the call end");
});

test("agent h2 client - aborting the caller's signal resets the stream (RST_STREAM CANCEL seen by the server)", async (t) => {
  const s = await startServer(t);
  const c = client(t, `127.0.0.1:${s.port}`);
  const ac = new AbortController();
  const call = unary(c, "/t.T/Hang", text("x"), opts({ signal: ac.signal }));
  await waitFor(() => s.seen.calls === 1, "the server to get the call");
  ac.abort();
  const err = await failure(call);
  t.is(err.code, Code.Canceled);
  await waitFor(() => s.seen.cancelled === 1, "the server to see the call cancelled");
  // The session survives a cancelled stream.
  t.is(str(await unary(c, "/t.T/Echo", text("after"))), "after");
});

test("agent h2 client - a trailers-only error carries its code and percent-decoded message", async (t) => {
  const s = await startServer(t);
  const c = client(t, `127.0.0.1:${s.port}`);
  const err = await failure(unary(c, "/t.T/Fail", text("no such agent: ünïcode 100%")));
  t.is(err.code, Code.NotFound);
  t.is(err.details, "no such agent: ünïcode 100%");
  t.true(err.delivered);
  t.is(decodeGrpcMessage("bad %zz escape"), "bad %zz escape");
});

test("agent h2 client - server streaming delivers every message in order, also past the flow-control window", async (t) => {
  const s = await startServer(t);
  const c = client(t, `127.0.0.1:${s.port}`);
  // 64 × 64 KiB = 4 MiB, far past HTTP/2's 64 KiB initial window: the reader pauses and resumes.
  const got: number[] = [];
  let bytes = 0;
  for await (const m of c.serverStream("/t.T/Stream", text("64 65536"), same, same, opts())) {
    got.push(m[0]!);
    bytes += m.length;
    if (got.length % 16 === 0) await new Promise((r) => setTimeout(r, 5)); // a slow reader
  }
  t.deepEqual(
    got,
    Array.from({ length: 64 }, (_, i) => i),
  );
  t.is(bytes, 64 * 65536);
});

test("agent h2 client - leaving a stream early cancels it on the server", async (t) => {
  const s = await startServer(t);
  const c = client(t, `127.0.0.1:${s.port}`);
  let n = 0;
  for await (const _ of c.serverStream("/t.T/Stream", text("100000 1024"), same, same, opts())) {
    if (++n === 3) break;
  }
  await waitFor(() => s.seen.cancelled === 1, "the server to see the stream cancelled");
  t.is(n, 3);
});

test("agent h2 client - large messages pass; above maxMessageBytes both ways are RESOURCE_EXHAUSTED", async (t) => {
  const s = await startServer(t);
  const c = client(t, `127.0.0.1:${s.port}`, {}, { maxMessageBytes: 3 << 20 });
  const big = new Uint8Array(3 << 20).fill(1);
  t.is((await unary(c, "/t.T/Echo", big)).length, big.length);
  const tooBig = await failure(unary(c, "/t.T/Echo", new Uint8Array((3 << 20) + 1)));
  t.is(tooBig.code, Code.ResourceExhausted);
  t.false(tooBig.delivered, "refused before sending");
  t.is(s.seen.calls, 1);
  const answerTooBig = await failure(unary(c, "/t.T/Echo", text(`size ${(3 << 20) + 1}`)));
  t.is(answerTooBig.code, Code.ResourceExhausted);
  t.regex(answerTooBig.details, /agent message of \d+ bytes exceeds/);
});

test("agent h2 client - no listener: UNAVAILABLE and undelivered, at once again during the backoff", async (t) => {
  const port = await freePort();
  const c = client(t, `127.0.0.1:${port}`, {}, { maxReconnectBackoffMs: 60_000 });
  const first = await failure(unary(c, "/t.T/Echo", text("x")));
  t.is(first.code, Code.Unavailable);
  t.false(first.delivered);
  t.regex(first.details, /No connection established/);
  const again = await failure(unary(c, "/t.T/Echo", text("x")));
  t.false(again.delivered);
  t.regex(again.details, /ECONNREFUSED/);
  t.false(c.connected());
});

test("agent h2 client - a server restart (GOAWAY, then a new listener on the port) is reconnected", async (t) => {
  const s = await startServer(t);
  const c = client(t, `127.0.0.1:${s.port}`, {}, { maxReconnectBackoffMs: 100 });
  t.is(str(await unary(c, "/t.T/Echo", text("one"))), "one");
  await new Promise<void>((r) => s.server.tryShutdown(() => r()));
  const down = await failure(unary(c, "/t.T/Echo", text("x")));
  t.false(down.delivered, down.details);
  const back = await startServer(t, { port: s.port });
  await waitFor(async () => str(await unary(c, "/t.T/Echo", text("two"))) === "two", "the client to reconnect");
  t.true(back.seen.calls >= 1);
});

/** A bare node:http2 server answering every stream with `answer`. */
async function rawServer(t: ExecutionContext, answer: (stream: http2.ServerHttp2Stream) => void): Promise<number> {
  const server = http2.createServer();
  const sessions = new Set<http2.ServerHttp2Session>();
  server.on("session", (s) => sessions.add(s));
  server.on("stream", (stream) => {
    stream.on("error", () => undefined); // a stream the test resets ends with an error on this side too
    answer(stream);
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  t.teardown(() => {
    for (const s of sessions) s.destroy();
    return new Promise<void>((r) => server.close(() => r()));
  });
  const port = (server.address() as AddressInfo).port;
  rawServers.set(port, server);
  return port;
}
const rawServers = new Map<number, http2.Http2Server>();

test("agent h2 client - REFUSED_STREAM is undelivered; an HTTP error without grpc-status maps to its gRPC code", async (t) => {
  const refusing = await rawServer(t, (s) => s.close(http2.constants.NGHTTP2_REFUSED_STREAM));
  const refused = await failure(unary(client(t, `127.0.0.1:${refusing}`), "/t.T/Echo", text("x")));
  t.is(refused.code, Code.Unavailable);
  t.false(refused.delivered);

  // A GOAWAY naming last stream id 0 as the session opens: whether it arrives before or after our
  // request went out, the agent did not process the call (RFC 9113 §6.8).
  const leaving = await rawServer(t, () => t.fail("no stream is processed after the GOAWAY"));
  rawServers.get(leaving)!.on("session", (s) => s.goaway(http2.constants.NGHTTP2_NO_ERROR, 0));
  const gone = await failure(unary(client(t, `127.0.0.1:${leaving}`), "/t.T/Echo", text("x")));
  t.is(gone.code, Code.Unavailable);
  t.false(gone.delivered, gone.details);

  const proxy = await rawServer(t, (s) => {
    s.respond({ ":status": 503, "content-type": "text/plain" });
    s.end("overloaded");
  });
  const busy = await failure(unary(client(t, `127.0.0.1:${proxy}`), "/t.T/Echo", text("x")));
  t.is(busy.code, Code.Unavailable);
  t.true(busy.delivered);
  t.is(codeOfHttpStatus(404), Code.Unimplemented);
  t.is(codeOfHttpStatus(418), Code.Unknown);

  const noStatus = await rawServer(t, (s) => {
    s.respond({ ":status": 200, "content-type": "application/grpc" });
    s.end();
  });
  const missing = await failure(unary(client(t, `127.0.0.1:${noStatus}`), "/t.T/Echo", text("x")));
  t.is(missing.code, Code.Internal);
  t.regex(missing.details, /without a grpc-status/);
});

test("agent h2 client - sessions grow to the limit while busy; past the agent's MAX_CONCURRENT_STREAMS calls wait, none fails", async (t) => {
  const server = http2.createServer({ settings: { maxConcurrentStreams: 1 } });
  const sessions = new Set<http2.Http2Session>();
  const open = new Map<http2.Http2Session, number>();
  let most = 0;
  server.on("session", (s) => {
    sessions.add(s);
    open.set(s, 0);
  });
  server.on("stream", (stream) => {
    const s = stream.session!;
    open.set(s, open.get(s)! + 1);
    most = Math.max(most, open.get(s)!);
    stream.on("close", () => open.set(s, open.get(s)! - 1));
    stream.on("error", () => undefined);
    // Answer once the request is read, a little later, so calls overlap.
    stream.resume();
    stream.on("end", () =>
      setTimeout(() => {
        stream.respond({ ":status": 200, "content-type": "application/grpc" }, { waitForTrailers: true });
        stream.on("wantTrailers", () => stream.sendTrailers({ "grpc-status": "0" }));
        stream.end(Buffer.from([0, 0, 0, 0, 2, 111, 107]));
      }, 20),
    );
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  t.teardown(() => {
    for (const s of sessions) s.destroy();
    return new Promise<void>((r) => server.close(() => r()));
  });
  const c = client(t, `127.0.0.1:${(server.address() as AddressInfo).port}`, {}, { sessions: 2 });
  t.is(str(await unary(c, "/t.T/Echo", text("warm"))), "ok");
  const answers = await Promise.all(Array.from({ length: 8 }, () => unary(c, "/t.T/Echo", text("x"))));
  t.deepEqual(answers.map(str), Array(8).fill("ok"));
  t.is(sessions.size, 2, "a second session opened while the first was busy, and no third");
  t.is(most, 1, "no session carried more streams than the agent allows");
});

test("agent h2 client - the pre-send hook judges every call first: a refusal sends nothing, an edit is what leaves", async (t) => {
  const s = await startServer(t);
  const judged: string[] = [];
  const c = client(t, `127.0.0.1:${s.port}`, {
    preSend: (path, headers, message) => {
      judged.push(`${path} ${str(message as Uint8Array)}`);
      delete headers["x-secret"];
      if (str(message as Uint8Array).includes("4111")) throw new Error("blocked");
      // A verdict that needs I/O: the call waits for it.
      return str(message as Uint8Array) === "slow" ? new Promise((r) => setTimeout(r, 20)) : undefined;
    },
  });
  await t.throwsAsync(unary(c, "/t.T/Echo", text("card 4111")), { message: "blocked" });
  const stream = c.serverStream("/t.T/Stream", text("4111"), same, same, opts());
  await t.throwsAsync(async () => {
    for await (const _ of stream) t.fail("a blocked stream yields nothing");
  });
  t.is(s.seen.calls, 0, "nothing reached the server");
  t.is(str(await unary(c, "/t.T/Echo", text("slow"), opts({ headers: { "x-secret": "s", "x-ok": "1" } }))), "slow");
  t.is(s.seen.metadata[0]?.["x-secret"], undefined);
  t.is(s.seen.metadata[0]?.["x-ok"], "1");
  t.deepEqual(judged, ["/t.T/Echo card 4111", "/t.T/Stream 4111", "/t.T/Echo slow"]);
});

test("agent h2 client - grpc-timeout uses the coarsest unit that fits 8 digits", (t) => {
  t.is(grpcTimeout(1500.2), "1501m");
  t.is(grpcTimeout(0), "1m");
  t.is(grpcTimeout(200_000_000), "200000S");
});

test("agent h2 client - TLS: a server without the expected SPIFFE ID is refused before any request; the right one answers", async (t) => {
  const TD = "nops.test";
  const ca = await createTestCa(TD);
  const svid = (spiffeId: string) => ca.issue({ spiffeId, ipAddresses: ["127.0.0.1"] });
  const serverTls = createTlsMaterial({
    source: createStaticSource(contextOf(await svid(`spiffe://${TD}/nops/tenant/t1/agent/a1`), [ca])),
    clock: systemClock,
    logger,
  });
  const source = createStaticSource(contextOf(await svid(`spiffe://${TD}/nops/kernel/k1`), [ca]));
  const kernelTls = createTlsMaterial({ source, clock: systemClock, logger });
  t.teardown(() => {
    serverTls.close();
    kernelTls.close();
  });
  const s = await startServer(t, { credentials: serverTls.grpcServerCredentials() });
  const rejections: string[] = [];
  const expecting = (id: string) =>
    client(t, `127.0.0.1:${s.port}`, {
      tls: () => kernelTls.clientOptions({ allowedIds: [id], onReject: (e) => rejections.push(e.message) }),
    });
  const impostor = await failure(unary(expecting(`spiffe://${TD}/nops/tenant/t2/agent/b1`), "/t.T/Echo", text("x")));
  t.is(impostor.code, Code.Unavailable);
  t.false(impostor.delivered);
  t.is(rejections.length, 1);
  t.is(s.seen.calls, 0);
  const good = expecting(`spiffe://${TD}/nops/tenant/t1/agent/a1`);
  t.is(str(await unary(good, "/t.T/Echo", text("hi"))), "hi");
  // Rotation: the open session keeps working; the next session presents the new SVID.
  source.set(contextOf(await svid(`spiffe://${TD}/nops/kernel/k1`), [ca]));
  t.is(str(await unary(good, "/t.T/Echo", text("still"))), "still");
  t.is(rejections.length, 1);
});
