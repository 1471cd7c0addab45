import type { DescMethod, DescService } from "@bufbuild/protobuf";
import type { HandlerContext, ServiceImpl } from "@connectrpc/connect";
import type { CallHandler, CallResult, KernelInterceptor } from "./interceptor.js";

/** Handler signature common to every method kind, as both transports call it. */
export type AnyMethodImpl = (input: unknown, ctx: HandlerContext) => unknown;

/** A service with the interceptor chain applied: what both transports serve. */
export interface BoundService {
  readonly service: DescService;
  /** connect-es shaped implementation (keys are method local names). */
  readonly impl: Record<string, AnyMethodImpl>;
}

const unaryResult = (output: unknown): CallResult => ({ kind: "unary", output });
const outputOf = (result: CallResult): unknown => result.output;

function isStreamingResponse(method: DescMethod): boolean {
  return method.methodKind === "server_streaming" || method.methodKind === "bidi_streaming";
}

/**
 * Applies `interceptors` (outermost first) to every method of `impl`. The result is served
 * unchanged by connect-node and by the grpc-js adapter, so the chain is one piece of code.
 */
export function bindService<S extends DescService>(
  service: S,
  impl: ServiceImpl<S>,
  interceptors: readonly KernelInterceptor[],
): BoundService {
  const handlers = impl as unknown as Record<string, AnyMethodImpl>;
  const bound: Record<string, AnyMethodImpl> = {};
  for (const method of service.methods) {
    const handler = handlers[method.localName];
    if (!handler) throw new Error(`${service.typeName} has no handler for ${method.name}`);
    const streaming = isStreamingResponse(method);
    // No async frames of their own for a unary call: the chain's links wait only where they must.
    const terminal: CallHandler = (call) => {
      try {
        const output = handler.call(impl, call.input, call.ctx);
        return streaming
          ? Promise.resolve({ kind: "stream", output: output as AsyncIterable<unknown> })
          : Promise.resolve(output).then(unaryResult);
      } catch (err) {
        return Promise.reject(err);
      }
    };
    const chain = interceptors.reduceRight<CallHandler>((next, interceptor) => interceptor(next), terminal);
    bound[method.localName] = streaming
      ? async function* (input: unknown, ctx: HandlerContext) {
          const result = await chain({ service, method, ctx, input });
          yield* result.output as AsyncIterable<unknown>;
        }
      : (input: unknown, ctx: HandlerContext) => chain({ service, method, ctx, input }).then(outputOf);
  }
  return { service, impl: bound };
}
