// The baseline: a bare grpc-js server answering Heartbeat with a constant, no interceptors, no
// storage, same protobuf-es serialization as the kernel. Prints its port, runs until killed.
import * as grpc from "@grpc/grpc-js";
import { create } from "@bufbuild/protobuf";
import { unaryMethod } from "./lib/grpc-unary.js";
import {
  AgentStatus,
  HeartbeatRequestSchema,
  HeartbeatResponseSchema,
} from "../gen/nops/kernel/v1/agent_registry_pb.js";

const server = new grpc.Server();
const reply = create(HeartbeatResponseSchema, { status: AgentStatus.HEALTHY, nextHeartbeatMs: 5000 });
server.addService(
  {
    heartbeat: unaryMethod(
      "/nops.kernel.v1.AgentRegistryService/Heartbeat",
      HeartbeatRequestSchema,
      HeartbeatResponseSchema,
    ),
  },
  { heartbeat: (_call: unknown, cb: grpc.sendUnaryData<unknown>) => cb(null, reply) },
);
server.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (err, port) => {
  if (err) throw err;
  process.stdout.write(`${port}\n`);
});
