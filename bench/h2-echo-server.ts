// A reference, not a target's baseline: Heartbeat answered over node:http2 with gRPC framed by hand
// (no grpc-js), the same constant answer and protobuf-es serialization as bench/echo-server.ts. Set
// beside the grpc-js echo it shows what grpc-js's server adds per call over HTTP/2 itself. Unary only,
// one message per call, no deadlines or metadata. Prints its port, runs until killed.
import * as http2 from "node:http2";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import {
  AgentStatus,
  HeartbeatRequestSchema,
  HeartbeatResponseSchema,
} from "../gen/nops/kernel/v1/agent_registry_pb.js";
import { grpcFrame } from "./lib/h2load.js";

const reply = create(HeartbeatResponseSchema, { status: AgentStatus.HEALTHY, nextHeartbeatMs: 5000 });
const server = http2.createServer();
server.on("stream", (stream) => {
  const chunks: Buffer[] = [];
  stream.on("data", (chunk: Buffer) => chunks.push(chunk));
  stream.on("end", () => {
    // Decoded as the grpc-js echo decodes it, then answered with a status in the trailers.
    fromBinary(HeartbeatRequestSchema, Buffer.concat(chunks).subarray(5));
    stream.respond({ ":status": 200, "content-type": "application/grpc" }, { waitForTrailers: true });
    stream.once("wantTrailers", () => stream.sendTrailers({ "grpc-status": "0" }));
    stream.end(grpcFrame(toBinary(HeartbeatResponseSchema, reply)));
  });
});
server.listen(0, "127.0.0.1", () => process.stdout.write(`${(server.address() as { port: number }).port}\n`));
