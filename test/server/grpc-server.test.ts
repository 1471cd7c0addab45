import { once } from "node:events";
import * as net from "node:net";
import test, { type ExecutionContext } from "ava";
import * as grpc from "@grpc/grpc-js";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { Code, ConnectError, type HandlerContext } from "@connectrpc/connect";
import {
  Health,
  HealthCheckRequestSchema,
  HealthCheckResponseSchema,
  HealthCheckResponse_ServingStatus as Serving,
} from "../../gen/grpc/health/v1/health_pb.js";
import { DEFAULT_KERNEL_OPTIONS } from "../../src/kernel/kernel-options.js";
import { bindService, type BoundService } from "../../src/server/bind-service.js";
import { createGrpcServer } from "../../src/server/grpc-server.js";
import { createConnectionGuard } from "../../src/server/connection-guard.js";
import { methodPath } from "../../src/server/interceptor.js";
import { waitFor } from "../helpers/processes.js";

const ser = (m: { service: string }) =>
  Buffer.from(toBinary(HealthCheckRequestSchema, create(HealthCheckRequestSchema, m)));
const de = (b: Buffer) => fromBinary(HealthCheckResponseSchema, b);

/** A client of `bound` served by the adapter on a free port; both closed when the test ends. */
async function serve(t: ExecutionContext, bound: BoundService): Promise<grpc.Client> {
  const server = createGrpcServer({ services: [bound], limits: DEFAULT_KERNEL_OPTIONS.limits });
  const port = await server.listen("127.0.0.1", 0, grpc.ServerCredentials.createInsecure());
  const client = new grpc.Client(`127.0.0.1:${port}`, grpc.credentials.createInsecure());
  t.teardown(async () => {
    client.close();
    await server.shutdown(1000);
  });
  return client;
}

// grpc-js emits "cancelled" after every answered call as well as for a caller that left: the
// handler's signal must abort only for the latter.
test("grpc-js adapter - a handler's signal aborts when the caller cancels, never after it was answered", async (t) => {
  const signals: { check: AbortSignal[]; watch: AbortSignal[] } = { check: [], watch: [] };
  const bound = bindService(
    Health,
    {
      check(_req, ctx: HandlerContext) {
        signals.check.push(ctx.signal);
        return { status: Serving.SERVING };
      },
      async *watch(_req, ctx: HandlerContext) {
        signals.watch.push(ctx.signal);
        yield { status: Serving.SERVING };
        await once(ctx.signal, "abort");
      },
    },
    [],
  );
  const client = await serve(t, bound);

  for (let i = 0; i < 3; i++) {
    const res = await new Promise<unknown>((resolve, reject) =>
      client.makeUnaryRequest(methodPath(Health.method.check), ser, de, { service: "" }, (err, value) =>
        err ? reject(err) : resolve(value),
      ),
    );
    t.like(res, { status: Serving.SERVING });
  }
  const stream = client.makeServerStreamRequest(methodPath(Health.method.watch), ser, de, { service: "" });
  stream.on("error", () => undefined);
  await once(stream, "data");
  stream.cancel();
  await waitFor(() => signals.watch[0]?.aborted === true, "the cancelled stream's signal aborts", 5000);
  // One more answered call on the same connection: its round trip comes after the earlier
  // calls' streams closed (and emitted "cancelled"), a barrier in place of a fixed sleep.
  await new Promise<unknown>((resolve, reject) =>
    client.makeUnaryRequest(methodPath(Health.method.check), ser, de, { service: "" }, (err, value) =>
      err ? reject(err) : resolve(value),
    ),
  );
  t.is(signals.check.length, 4);
  t.true(
    signals.check.slice(0, 3).every((s) => !s.aborted),
    "no answered call aborted its handler",
  );
});

// The signal is made when first read: a handler that reads it only after its caller left finds it aborted.
test("grpc-js adapter - a handler that reads its signal after the caller cancelled finds it aborted", async (t) => {
  let release!: () => void;
  const released = new Promise<void>((r) => (release = r));
  let started!: () => void;
  const handlerStarted = new Promise<void>((r) => (started = r));
  let seen: AbortSignal | undefined;
  const bound = bindService(
    Health,
    {
      async check(req, ctx: HandlerContext) {
        if (req.service === "barrier") return { status: Serving.SERVING };
        started();
        await released;
        seen = ctx.signal;
        return { status: Serving.SERVING };
      },
      async *watch() {},
    },
    [],
  );
  const client = await serve(t, bound);
  const check = (service: string) =>
    new Promise<unknown>((resolve, reject) => {
      const call = client.makeUnaryRequest(methodPath(Health.method.check), ser, de, { service }, (err, value) =>
        err ? reject(err) : resolve(value),
      );
      if (service === "") void handlerStarted.then(() => call.cancel());
    });
  const cancelled = check("").catch((err: grpc.ServiceError) => err.code);
  await handlerStarted;
  // The RST_STREAM goes out before the next call on the same connection: once that call is answered,
  // the server has seen the first one cancelled.
  await check("barrier");
  release();
  t.is(await cancelled, grpc.status.CANCELLED);
  await waitFor(() => seen !== undefined, "the handler read its signal", 5000);
  t.true(seen!.aborted, "aborted: the caller had gone");
  t.is(ConnectError.from(seen!.reason).code, Code.Canceled);
});

test("grpc-js adapter - a handler reads the call's metadata and its response headers and trailers reach the caller", async (t) => {
  const seen: (string | null)[] = [];
  const bound = bindService(
    Health,
    {
      check(req, ctx: HandlerContext) {
        seen.push(ctx.requestHeader.get("x-caller"), ctx.requestHeader.get("token-bin"));
        ctx.responseHeader.set("x-ratelimit-remaining", "7");
        ctx.responseHeader.set("content-type", "text/plain"); // the transport's own: dropped
        ctx.responseTrailer.set("x-digest-bin", Buffer.from([1, 2, 3]).toString("base64"));
        if (req.service === "fail") {
          throw new ConnectError("no", Code.ResourceExhausted, {
            "retry-after": "3",
            "grpc-status": "0",
            "x-note": "caf\u00e9", // not printable ASCII: gRPC metadata cannot carry it
          });
        }
        return { status: Serving.SERVING };
      },
      async *watch() {},
    },
    [],
  );
  const client = await serve(t, bound);
  const call = (service: string) => {
    const md = new grpc.Metadata();
    md.set("x-caller", "agent-7");
    md.set("token-bin", Buffer.from([0xff, 0x00]));
    const answer = { headers: new grpc.Metadata(), trailers: new grpc.Metadata(), code: grpc.status.OK };
    return new Promise<typeof answer>((resolve) => {
      const c = client.makeUnaryRequest(methodPath(Health.method.check), ser, de, { service }, md, (err) => {
        if (err) answer.code = err.code;
      });
      c.on("metadata", (m: grpc.Metadata) => (answer.headers = m));
      c.on("status", (s: grpc.StatusObject) => resolve({ ...answer, trailers: s.metadata }));
    });
  };

  const ok = await call("");
  t.deepEqual(seen, ["agent-7", Buffer.from([0xff, 0x00]).toString("base64").replace(/=+$/, "")]);
  t.deepEqual(ok.headers.get("x-ratelimit-remaining"), ["7"]);
  t.deepEqual(ok.headers.get("content-type"), ["application/grpc+proto"], "the transport's content type only");
  t.deepEqual(ok.trailers.get("x-digest-bin"), [Buffer.from([1, 2, 3])]);

  const failed = await call("fail");
  t.is(failed.code, grpc.status.RESOURCE_EXHAUSTED);
  t.deepEqual(failed.headers.get("x-ratelimit-remaining"), ["7"]);
  t.deepEqual(failed.trailers.get("retry-after"), ["3"], "the error's metadata is in the trailers");
  t.deepEqual(failed.trailers.get("x-digest-bin"), [Buffer.from([1, 2, 3])], "beside what the handler set");
  t.deepEqual(failed.trailers.get("x-note"), [], "a value gRPC cannot carry is left out, the status sent");
});

function healthServer(
  limits = DEFAULT_KERNEL_OPTIONS.limits,
  budget = { maxConnections: 100, maxConnectionsPerIp: 100 },
) {
  const bound = bindService(Health, { check: () => ({ status: Serving.SERVING }), async *watch() {} }, []);
  const guard = createConnectionGuard({}, budget);
  return { guard, server: createGrpcServer({ services: [bound], limits, guard }) };
}

test("grpc-js adapter - a connection that makes no call within headersTimeoutMs is closed; one that calls stays", async (t) => {
  // 1 s: long enough for a loaded machine to send the calling connection's first call in time.
  const { guard, server } = healthServer({ ...DEFAULT_KERNEL_OPTIONS.limits, headersTimeoutMs: 1000 });
  const port = await server.listen("127.0.0.1", 0, grpc.ServerCredentials.createInsecure());
  const client = new grpc.Client(`127.0.0.1:${port}`, grpc.credentials.createInsecure());
  t.teardown(async () => {
    client.close();
    await server.shutdown(100);
  });
  // A silent connection (not even the HTTP/2 preface).
  const silent = net.connect(port, "127.0.0.1");
  silent.on("error", () => undefined);
  silent.resume();
  const closed = new Promise((resolve) => silent.once("close", resolve));
  const check = () =>
    new Promise<unknown>((resolve, reject) =>
      client.makeUnaryRequest(methodPath(Health.method.check), ser, de, { service: "" }, (err, value) =>
        err ? reject(err) : resolve(value),
      ),
    );
  await check();
  await closed;
  t.is(guard.stats().reaped, 1, "only the silent connection was reaped");
  // The calling connection outlived the deadline and still answers on the same channel.
  await waitFor(() => guard.stats().open === 1, "the silent connection released", 2000);
  await new Promise((r) => setTimeout(r, 1200));
  t.like(await check(), { status: Serving.SERVING });
  t.is(guard.stats().reaped, 1);
});

test("grpc-js adapter - the connection budget resets connections past it at accept", async (t) => {
  const { guard, server } = healthServer(DEFAULT_KERNEL_OPTIONS.limits, {
    maxConnections: 100,
    maxConnectionsPerIp: 2,
  });
  const port = await server.listen("127.0.0.1", 0, grpc.ServerCredentials.createInsecure());
  t.teardown(() => server.shutdown(100));
  const sockets = Array.from({ length: 4 }, () => {
    const s = net.connect(port, "127.0.0.1");
    s.on("error", () => undefined);
    return s;
  });
  await waitFor(() => guard.stats().open + guard.stats().refused === 4, "all accepted or refused", 5000);
  t.is(guard.stats().open, 2);
  t.is(guard.stats().refused, 2);
  for (const s of sockets) s.destroy();
});
