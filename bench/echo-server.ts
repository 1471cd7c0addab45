// The baseline: a bare grpc-js server answering Heartbeat with a constant, no interceptors, no
// storage, same protobuf-es serialization as the kernel. Prints its port, runs until killed.
import * as grpc from "@grpc/grpc-js";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { AgentStatus, HeartbeatRequestSchema, HeartbeatResponseSchema } from "../gen/nops/kernel/v1/agent_registry_pb.js";

const server = new grpc.Server();
const reply = create(HeartbeatResponseSchema, { status: AgentStatus.HEALTHY, nextHeartbeatMs: 5000 });
server.addService(
  {
    heartbeat: {
      path: "/nops.kernel.v1.AgentRegistryService/Heartbeat",
      requestStream: false,
      responseStream: false,
      requestSerialize: (m: unknown) => Buffer.from(toBinary(HeartbeatRequestSchema, m as never)),
      requestDeserialize: (b: Buffer) => fromBinary(HeartbeatRequestSchema, b),
      responseSerialize: (m: unknown) => Buffer.from(toBinary(HeartbeatResponseSchema, m as never)),
      responseDeserialize: (b: Buffer) => fromBinary(HeartbeatResponseSchema, b),
    },
  },
  { heartbeat: (_call: unknown, cb: grpc.sendUnaryData<unknown>) => cb(null, reply) },
);
server.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (err, port) => {
  if (err) throw err;
  process.stdout.write(`${port}\n`);
});
