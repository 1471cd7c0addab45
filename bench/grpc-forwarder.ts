// The floor of a routing hop: a bare grpc-js server that serves RoutingService/Invoke by
// decoding the request, calling the one agent it was given with a grpc-js client and encoding
// the answer. No chain, no selection, no guard, no storage. Prints its port, runs until killed.
//   node --import tsx bench/grpc-forwarder.ts <agent host:port>
import * as grpc from "@grpc/grpc-js";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { unaryMethod } from "./lib/grpc-unary.js";
import {
  AgentService,
  HandleRequestSchema,
  HandleResponseSchema,
  type HandleResponse,
} from "../gen/nops/agent/v1/agent_pb.js";
import {
  InvokeRequestSchema,
  InvokeResponseSchema,
  RoutingService,
  type InvokeRequest,
} from "../gen/nops/kernel/v1/routing_pb.js";

const agent = new grpc.Client(process.argv[2]!, grpc.credentials.createInsecure());
const handlePath = `/${AgentService.typeName}/Handle`;
const server = new grpc.Server();
server.addService(
  { invoke: unaryMethod(`/${RoutingService.typeName}/Invoke`, InvokeRequestSchema, InvokeResponseSchema) },
  {
    invoke: (call: grpc.ServerUnaryCall<InvokeRequest, unknown>, cb: grpc.sendUnaryData<unknown>) => {
      const { tenant, capability, payload, contentType } = call.request;
      const req = create(HandleRequestSchema, { invocation: { tenant, capability, payload, contentType } });
      agent.makeUnaryRequest(
        handlePath,
        (m: typeof req) => Buffer.from(toBinary(HandleRequestSchema, m)),
        (b: Buffer) => fromBinary(HandleResponseSchema, b),
        req,
        new grpc.Metadata(),
        { deadline: call.getDeadline() },
        (err: grpc.ServiceError | null, res?: HandleResponse) =>
          err
            ? cb(err)
            : cb(
                null,
                create(InvokeResponseSchema, { payload: res!.payload, contentType: res!.contentType, attempts: 1 }),
              ),
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
