import test from "ava";
import * as grpc from "@grpc/grpc-js";
import { createManualClock, systemClock, type Clock } from "../../../src/common/clock.js";
import { ConfigError } from "../../../src/common/errors.js";
import { createSilentLogger } from "../../../src/telemetry/logger.js";
import {
  createWorkloadX509Source,
  resolveWorkloadX509SourceOptions,
  workloadEndpointTarget,
  WorkloadApiError,
} from "../../../src/identity/spiffe/workload-api-client.js";
import type { X509Context } from "../../../src/identity/spiffe/x509-source.js";
import { createTestCa, type TestCa } from "../../helpers/test-ca.js";
import { startWorkloadApiDouble, type WorkloadApiDouble } from "../../helpers/workload-api-double.js";
import { createTestMeter, waitFor } from "./support.js";

const KERNEL_ID = "spiffe://nops.test/nops/kernel/edge-1";

async function setup(t: { teardown(fn: () => Promise<void> | void): void }) {
  const double = await startWorkloadApiDouble();
  const metrics = createTestMeter();
  const source = createWorkloadX509Source(
    { logger: createSilentLogger(), clock: systemClock, meter: metrics.meter },
    { socket: double.address, initialBackoffMs: 10, maxBackoffMs: 50 },
  );
  t.teardown(async () => {
    await source.close();
    await double.close();
  });
  return { double, source, metrics };
}

async function issue(
  double: WorkloadApiDouble,
  ca: TestCa,
  spiffeId = KERNEL_ID,
  federated?: Record<string, Uint8Array>,
) {
  const svid = await ca.issue({ spiffeId });
  double.issue({ spiffeId, svid, bundle: ca.certDer, ...(federated ? { federatedBundles: federated } : {}) });
  return svid;
}

test("workload api client - serves the first SVID and its bundles", async (t) => {
  const ca = await createTestCa("nops.test");
  const other = await createTestCa("partner.example");
  const { double, source } = await setup(t);
  const svid = await issue(double, ca, KERNEL_ID, { "spiffe://partner.example": other.certDer });
  const ctx = await source.ready();
  t.is(ctx.svid.spiffeId.id, KERNEL_ID);
  t.deepEqual(Buffer.from(ctx.svid.certificates[0]!), Buffer.from(svid.certificates[0]!));
  t.deepEqual([...ctx.bundles.keys()].sort(), ["nops.test", "partner.example"]);
  t.is(source.current(), ctx);
});

test("workload api client - sends workload.spiffe.io: true on every call", async (t) => {
  const ca = await createTestCa("nops.test");
  const { double, source } = await setup(t);
  await issue(double, ca);
  await source.ready();
  double.endStreams(grpc.status.UNAVAILABLE);
  await waitFor(() => double.calls.length >= 2 && double.openStreams() === 1, "reconnect");
  t.true(double.calls.length >= 2);
  for (const call of double.calls) t.deepEqual(call.securityHeader, ["true"]);
});

test("workload api client - the double answers InvalidArgument without the security header", async (t) => {
  const double = await startWorkloadApiDouble();
  t.teardown(() => double.close());
  const client = new grpc.Client(double.address, grpc.credentials.createInsecure());
  t.teardown(() => client.close());
  const status = await new Promise<grpc.StatusObject>((resolve) => {
    const call = client.makeServerStreamRequest(
      "/SpiffeWorkloadAPI/FetchX509SVID",
      (b: Buffer) => b,
      (b: Buffer) => b,
      Buffer.alloc(0),
      new grpc.Metadata(),
    );
    call.on("error", () => undefined);
    call.on("status", resolve);
  });
  t.is(status.code, grpc.status.INVALID_ARGUMENT);
});

test("workload api client - retries after PermissionDenied until an identity is issued", async (t) => {
  const ca = await createTestCa("nops.test");
  const { double, source, metrics } = await setup(t);
  await waitFor(() => double.calls.length >= 3, "several denied attempts");
  t.is(source.current(), undefined);
  t.true((await metrics.counter("nops.spiffe.workload_api.stream_errors")) >= 2);
  await issue(double, ca);
  const ctx = await source.ready();
  t.is(ctx.svid.spiffeId.id, KERNEL_ID);
});

test("workload api client - retries after Unavailable and picks up the new state", async (t) => {
  const ca = await createTestCa("nops.test");
  const { double, source } = await setup(t);
  await issue(double, ca);
  const first = await source.ready();
  double.failWith(grpc.status.UNAVAILABLE);
  double.endStreams(grpc.status.UNAVAILABLE);
  const calls = double.calls.length;
  await waitFor(() => double.calls.length >= calls + 2, "retries while unavailable");
  t.is(source.current(), first, "keeps the last good identity while the agent is away");
  // The agent comes back with a new identity: the first message after reconnecting carries it.
  await issue(double, ca, "spiffe://nops.test/nops/kernel/edge-2");
  const next = new Promise<X509Context>((resolve) => source.onUpdate(resolve));
  double.failWith(null);
  t.is((await next).svid.spiffeId.id, "spiffe://nops.test/nops/kernel/edge-2");
});

test("workload api client - stops on InvalidArgument", async (t) => {
  const double = await startWorkloadApiDouble();
  double.failWith(grpc.status.INVALID_ARGUMENT);
  const metrics = createTestMeter();
  // Retries are scheduled on the clock: a manual one shows whether any is pending.
  const clock = createManualClock(Date.now());
  const source = createWorkloadX509Source(
    { logger: createSilentLogger(), clock, meter: metrics.meter },
    { socket: double.address, initialBackoffMs: 10, maxBackoffMs: 20 },
  );
  t.teardown(async () => {
    await source.close();
    await double.close();
  });
  await t.throwsAsync(source.ready(), { instanceOf: WorkloadApiError });
  t.is(clock.pendingTimers(), 0, "no retry scheduled");
  await clock.advanceAsync(1000);
  t.is(double.calls.length, 1);
});

test("workload api client - skips a malformed message and keeps the previous state", async (t) => {
  const ca = await createTestCa("nops.test");
  const { double, source, metrics } = await setup(t);
  await issue(double, ca);
  const good = await source.ready();
  const updates: X509Context[] = [];
  source.onUpdate((c) => updates.push(c));

  double.pushRaw(Uint8Array.from([0x0a, 0xff, 0xff, 0xff])); // truncated protobuf
  const bad = await ca.issue({ uris: ["spiffe://nops.test/a", "spiffe://nops.test/b"] });
  double.issue({ spiffeId: "spiffe://nops.test/a", svid: bad, bundle: ca.certDer }); // two URI SANs
  await waitFor(
    async () => (await metrics.counter("nops.spiffe.workload_api.malformed_messages")) === 2,
    "two malformed messages counted",
  );
  t.is(source.current(), good);
  t.is(updates.length, 0);
  t.is(double.openStreams(), 1, "the stream stays open");

  const next = new Promise<X509Context>((resolve) => source.onUpdate(resolve));
  await issue(double, ca, "spiffe://nops.test/nops/kernel/edge-3");
  t.is((await next).svid.spiffeId.id, "spiffe://nops.test/nops/kernel/edge-3");
});

test("workload api client - rejects an SVID whose spiffe_id does not match the certificate", async (t) => {
  const ca = await createTestCa("nops.test");
  const { double, source, metrics } = await setup(t);
  const svid = await ca.issue({ spiffeId: KERNEL_ID });
  double.issue({ spiffeId: "spiffe://nops.test/other", svid, bundle: ca.certDer });
  await waitFor(
    async () => (await metrics.counter("nops.spiffe.workload_api.malformed_messages")) === 1,
    "mismatch counted",
  );
  t.is(source.current(), undefined);
});

test("workload api client - rejects an expired SVID from the stream", async (t) => {
  const ca = await createTestCa("nops.test");
  const double = await startWorkloadApiDouble();
  const metrics = createTestMeter();
  // Past the test SVID's 1 h lifetime; timers stay real, as reconnects must run.
  const clock: Clock = { ...systemClock, now: () => Date.now() + 2 * 3600_000 };
  const source = createWorkloadX509Source(
    { logger: createSilentLogger(), clock, meter: metrics.meter },
    { socket: double.address, initialBackoffMs: 10, maxBackoffMs: 50 },
  );
  t.teardown(async () => {
    await source.close();
    await double.close();
  });
  await issue(double, ca);
  await waitFor(
    async () => (await metrics.counter("nops.spiffe.workload_api.malformed_messages")) === 1,
    "expired SVID counted",
  );
  t.is(source.current(), undefined);
});

test("workload api client - endpoint addresses follow the Workload Endpoint spec", (t) => {
  t.is(workloadEndpointTarget("unix:///run/spire/agent.sock"), "unix:///run/spire/agent.sock");
  t.is(workloadEndpointTarget("tcp://127.0.0.1:8081"), "ipv4:127.0.0.1:8081");
  t.is(workloadEndpointTarget("tcp://[::1]:8081"), "ipv6:[::1]:8081");
  for (const bad of [
    "unix://host/path",
    "unix:relative",
    "tcp://localhost:8081",
    "tcp://127.0.0.1",
    "http://127.0.0.1:1",
    "unix:///a?x=1",
    "nonsense",
  ]) {
    t.throws(() => workloadEndpointTarget(bad), { instanceOf: ConfigError }, bad);
  }
  t.throws(() => resolveWorkloadX509SourceOptions({ socket: "unix:///a", maxBackoffMs: 0 }, "spiffe"), {
    message: /spiffe\.maxBackoffMs/,
  });
  t.throws(() => resolveWorkloadX509SourceOptions({}, "spiffe"), { message: /spiffe\.socket is required/ });
});
