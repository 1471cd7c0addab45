import { once } from "node:events";
import * as net from "node:net";
import test from "ava";
import * as grpc from "@grpc/grpc-js";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import type { HandlerContext } from "@connectrpc/connect";
import {
  Health,
  HealthCheckRequestSchema,
  HealthCheckResponseSchema,
  HealthCheckResponse_ServingStatus as Serving,
} from "../../gen/grpc/health/v1/health_pb.js";
import { DEFAULT_KERNEL_OPTIONS } from "../../src/kernel/kernel-options.js";
import { bindService } from "../../src/server/bind-service.js";
import { createGrpcServer } from "../../src/server/grpc-server.js";
import { createConnectionGuard } from "../../src/server/connection-guard.js";
import { methodPath } from "../../src/server/interceptor.js";
import { waitFor } from "../helpers/processes.js";

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
  const server = createGrpcServer({ services: [bound], limits: DEFAULT_KERNEL_OPTIONS.limits });
  const port = await server.listen("127.0.0.1", 0, grpc.ServerCredentials.createInsecure());
  const client = new grpc.Client(`127.0.0.1:${port}`, grpc.credentials.createInsecure());
  t.teardown(async () => {
    client.close();
    await server.shutdown(1000);
  });
  const ser = (m: { service: string }) =>
    Buffer.from(toBinary(HealthCheckRequestSchema, create(HealthCheckRequestSchema, m)));
  const de = (b: Buffer) => fromBinary(HealthCheckResponseSchema, b);

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
  const ser = (m: { service: string }) =>
    Buffer.from(toBinary(HealthCheckRequestSchema, create(HealthCheckRequestSchema, m)));
  const de = (b: Buffer) => fromBinary(HealthCheckResponseSchema, b);
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
