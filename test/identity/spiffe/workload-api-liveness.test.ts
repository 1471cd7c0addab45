import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import test from "ava";
import * as grpc from "@grpc/grpc-js";
import { createDependencyBreaker } from "../../../src/common/dependency-breaker.js";
import { createWorkloadApiLiveness } from "../../../src/identity/spiffe/workload-api-client.js";
import { createSilentLogger } from "../../../src/telemetry/logger.js";

/** A Workload API endpoint whose FetchX509Bundles answers, fails or hangs (a stopped agent) on demand. */
async function startAgent(): Promise<{
  socket: string;
  mode: { value: "answer" | "hang" | "permission-denied" };
  calls: () => number;
  close(): Promise<void>;
}> {
  const dir = await mkdtemp(join(tmpdir(), "wl-liveness-"));
  const socket = `unix://${join(dir, "agent.sock")}`;
  const mode = { value: "answer" as "answer" | "hang" | "permission-denied" };
  let calls = 0;
  const raw = (b: Buffer) => b;
  const server = new grpc.Server();
  server.addService(
    {
      FetchX509Bundles: {
        path: "/SpiffeWorkloadAPI/FetchX509Bundles",
        requestStream: false,
        responseStream: true,
        requestSerialize: raw,
        requestDeserialize: raw,
        responseSerialize: raw,
        responseDeserialize: raw,
      },
    },
    {
      FetchX509Bundles: (call: grpc.ServerWritableStream<Buffer, Buffer>) => {
        calls++;
        if (call.metadata.get("workload.spiffe.io")[0] !== "true") {
          call.emit("error", { code: grpc.status.INVALID_ARGUMENT, details: "security header missing" });
          return;
        }
        if (mode.value === "answer") call.write(Buffer.from([0x0a, 0x00]));
        else if (mode.value === "permission-denied")
          call.emit("error", { code: grpc.status.PERMISSION_DENIED, details: "no identity issued" });
        // "hang": accept the call and never write, like a SIGSTOPped agent behind a live socket.
      },
    },
  );
  await new Promise<void>((resolve, reject) =>
    server.bindAsync(socket, grpc.ServerCredentials.createInsecure(), (err) => (err ? reject(err) : resolve())),
  );
  return {
    socket,
    mode,
    calls: () => calls,
    async close() {
      server.forceShutdown();
      await rm(dir, { recursive: true, force: true });
    },
  };
}

test("workload api liveness - a silent agent opens the breaker, an answer closes it", async (t) => {
  const agent = await startAgent();
  t.teardown(() => agent.close());
  const breaker = createDependencyBreaker({ logger: createSilentLogger() }, "workload-api", {
    budgetMs: 100,
    failuresToTrip: 2,
    halfOpenAfterMs: 50,
    probeIntervalMs: 100,
  });
  const liveness = createWorkloadApiLiveness({ logger: createSilentLogger(), breaker }, { socket: agent.socket });
  t.teardown(() => liveness.stop());

  await liveness.check();
  t.deepEqual(liveness.connection(), { connected: true });

  // An error status is still an answer: the agent is alive (it just has nothing for us).
  agent.mode.value = "permission-denied";
  await liveness.check();
  await liveness.check();
  t.deepEqual(liveness.connection(), { connected: true });

  agent.mode.value = "hang";
  await liveness.check();
  t.true(liveness.connection().connected, "one miss is not a hang");
  await liveness.check();
  const down = liveness.connection();
  t.false(down.connected);
  t.regex(down.detail ?? "", /^Workload API not answering \(workload-api gave no answer within 100 ms\)/);

  agent.mode.value = "answer";
  await new Promise((r) => setTimeout(r, 80));
  await liveness.check();
  t.deepEqual(liveness.connection(), { connected: true });
  t.true(agent.calls() >= 6);
});
