// The connect-node baseline: a bare connect-node server (HTTP/2 cleartext, every protocol)
// answering Heartbeat with a constant, no interceptors, no storage. Prints its port, runs until killed.
import { createServer } from "node:http2";
import { create } from "@bufbuild/protobuf";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import { AgentRegistryService, AgentStatus, HeartbeatResponseSchema } from "../gen/nops/kernel/v1/agent_registry_pb.js";

const reply = create(HeartbeatResponseSchema, { status: AgentStatus.HEALTHY, nextHeartbeatMs: 5000 });
const server = createServer(
  connectNodeAdapter({
    routes: (router) => router.service(AgentRegistryService, { heartbeat: () => reply }, {}),
  }),
);
server.listen(0, "127.0.0.1", () => {
  const address = server.address();
  process.stdout.write(`${typeof address === "object" && address ? address.port : ""}\n`);
});
