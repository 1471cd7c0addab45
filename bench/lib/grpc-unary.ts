import type * as grpc from "@grpc/grpc-js";
import { fromBinary, toBinary, type DescMessage } from "@bufbuild/protobuf";

/** A grpc-js unary method definition serialized with protobuf-es, as the kernel serializes. */
export function unaryMethod(
  path: string,
  input: DescMessage,
  output: DescMessage,
): grpc.MethodDefinition<unknown, unknown> {
  return {
    path,
    requestStream: false,
    responseStream: false,
    requestSerialize: (m: unknown) => Buffer.from(toBinary(input, m as never)),
    requestDeserialize: (b: Buffer) => fromBinary(input, b),
    responseSerialize: (m: unknown) => Buffer.from(toBinary(output, m as never)),
    responseDeserialize: (b: Buffer) => fromBinary(output, b),
  };
}
