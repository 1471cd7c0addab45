import { toBinary, type DescFile, type DescMessage, type DescService } from "@bufbuild/protobuf";
import { FileDescriptorProtoSchema } from "@bufbuild/protobuf/wkt";
import type { ServiceImpl } from "@connectrpc/connect";
import type { MessageInitShape } from "@bufbuild/protobuf";
import type { ServerReflection } from "../../gen/grpc/reflection/v1/reflection_pb.js";
import {
  type ServerReflectionRequest,
  type ServerReflectionResponseSchema,
} from "../../gen/grpc/reflection/v1/reflection_pb.js";

type Response = MessageInitShape<typeof ServerReflectionResponseSchema>;

function collectMessages(messages: readonly DescMessage[], into: Map<string, DescFile>, file: DescFile): void {
  for (const m of messages) {
    into.set(m.typeName, file);
    collectMessages(m.nestedMessages, into, file);
    for (const e of m.nestedEnums) into.set(e.typeName, file);
  }
}

/**
 * grpc.reflection.v1 over the descriptors compiled into gen/ (grpc reflection protocol:
 * a file is returned with all of its transitive dependencies).
 */
export function createReflectionService(services: readonly DescService[]): ServiceImpl<typeof ServerReflection> {
  const byFilename = new Map<string, DescFile>();
  const bySymbol = new Map<string, DescFile>();
  const visit = (file: DescFile) => {
    if (byFilename.has(file.name + ".proto")) return;
    byFilename.set(file.name + ".proto", file);
    for (const s of file.services) {
      bySymbol.set(s.typeName, file);
      for (const m of s.methods) bySymbol.set(`${s.typeName}.${m.name}`, file);
    }
    collectMessages(file.messages, bySymbol, file);
    for (const e of file.enums) bySymbol.set(e.typeName, file);
    file.dependencies.forEach(visit);
  };
  services.forEach((s) => visit(s.file));

  const withDependencies = (file: DescFile): Uint8Array[] => {
    const out: Uint8Array[] = [];
    const seen = new Set<string>();
    const walk = (f: DescFile) => {
      if (seen.has(f.name)) return;
      seen.add(f.name);
      out.push(toBinary(FileDescriptorProtoSchema, f.proto));
      f.dependencies.forEach(walk);
    };
    walk(file);
    return out;
  };

  const answer = (req: ServerReflectionRequest): Response => {
    const base = { validHost: req.host, originalRequest: req };
    const notFound = (what: string): Response => ({
      ...base,
      messageResponse: { case: "errorResponse", value: { errorCode: 5, errorMessage: `${what} not found` } },
    });
    const files = (file: DescFile | undefined, what: string): Response =>
      file
        ? {
            ...base,
            messageResponse: { case: "fileDescriptorResponse", value: { fileDescriptorProto: withDependencies(file) } },
          }
        : notFound(what);
    const r = req.messageRequest;
    switch (r.case) {
      case "listServices":
        return {
          ...base,
          messageResponse: {
            case: "listServicesResponse",
            value: { service: services.map((s) => ({ name: s.typeName })) },
          },
        };
      case "fileByFilename":
        return files(byFilename.get(r.value), `file ${r.value}`);
      case "fileContainingSymbol":
        return files(bySymbol.get(r.value), `symbol ${r.value}`);
      case "allExtensionNumbersOfType":
        return {
          ...base,
          messageResponse: {
            case: "allExtensionNumbersResponse",
            value: { baseTypeName: r.value, extensionNumber: [] },
          },
        };
      default:
        return {
          ...base,
          messageResponse: {
            case: "errorResponse",
            value: { errorCode: 12, errorMessage: "request type not supported" },
          },
        };
    }
  };

  return {
    async *serverReflectionInfo(requests) {
      for await (const req of requests) yield answer(req);
    },
  };
}
