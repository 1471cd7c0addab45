// The floor of a routing hop: a bare grpc-js server that serves RoutingService/Invoke by
// decoding the request, calling the one agent it was given with the router's own agent client
// (pooled node:http2 sessions, src/routing/agent-h2-client.ts) and encoding the answer. No chain,
// no selection, no guard (a pass-through pre-send hook), no storage. Prints its port, runs until killed.
//   node --import tsx bench/grpc-forwarder.ts <agent host:port>
import * as grpc from "@grpc/grpc-js";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { unaryMethod } from "./lib/grpc-unary.js";
import {
  AgentService,
  HandleRequestSchema,
  HandleResponseSchema,
  type HandleRequest,
} from "../gen/nops/agent/v1/agent_pb.js";
import {
  InvokeRequestSchema,
  InvokeResponseSchema,
  RoutingService,
  type InvokeRequest,
} from "../gen/nops/kernel/v1/routing_pb.js";
import { systemClock } from "../src/common/clock.js";
import { createAgentH2Client, type AgentCallError } from "../src/routing/agent-h2-client.js";
import { DEFAULT_CHANNEL_POOL_OPTIONS } from "../src/routing/routing-options.js";
import { createSilentLogger } from "../src/telemetry/logger.js";

const agent = createAgentH2Client(
  { target: process.argv[2]!, preSend: () => undefined, clock: systemClock, logger: createSilentLogger() },
  {
    sessions: DEFAULT_CHANNEL_POOL_OPTIONS.sessionsPerEndpoint,
    maxMessageBytes: DEFAULT_CHANNEL_POOL_OPTIONS.maxMessageBytes,
    maxReconnectBackoffMs: DEFAULT_CHANNEL_POOL_OPTIONS.maxReconnectBackoffMs,
  },
);
const handlePath = `/${AgentService.typeName}/${AgentService.method.handle.name}`;
const encode = (m: HandleRequest) => toBinary(HandleRequestSchema, m);
const decode = (b: Uint8Array) => fromBinary(HandleResponseSchema, b);
const never = new AbortController().signal;
const server = new grpc.Server();
server.addService(
  { invoke: unaryMethod(`/${RoutingService.typeName}/Invoke`, InvokeRequestSchema, InvokeResponseSchema) },
  {
    invoke: (call: grpc.ServerUnaryCall<InvokeRequest, unknown>, cb: grpc.sendUnaryData<unknown>) => {
      const { tenant, capability, payload, contentType } = call.request;
      const req = create(HandleRequestSchema, { invocation: { tenant, capability, payload, contentType } });
      const deadline = call.getDeadline();
      void agent
        .unary(handlePath, req, encode, decode, {
          deadline: deadline === Infinity ? Date.now() + 60_000 : new Date(deadline).getTime(),
          headers: {},
          signal: never,
        })
        .then(
          (res) =>
            cb(null, create(InvokeResponseSchema, { payload: res.payload, contentType: res.contentType, attempts: 1 })),
          (err: AgentCallError) => cb({ code: err.code as number, details: err.details }),
        );
    },
  },
);
server.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (err, port) => {
  if (err) throw err;
  process.stdout.write(`${port}\n`);
});
// Exit normally on SIGTERM so --cpu-prof can write its profile.
process.once("SIGTERM", () => process.exit(0));
