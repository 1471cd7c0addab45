import { Code } from "@connectrpc/connect";
import {
  SpanKind,
  SpanStatusCode,
  context,
  isSpanContextValid,
  trace,
  type Attributes,
  type Context,
  type Span,
  type Tracer,
} from "@opentelemetry/api";
import { kPeer, observeStream, type KernelInterceptor } from "../server/index.js";
import { callCode, grpcCodeName } from "./rpc-metrics-interceptor.js";
import { extractTraceHeaders } from "./trace-context.js";

// OTel semantic conventions for gRPC servers: only these codes make a server span an error;
// the others are the caller's doing.
const SERVER_ERRORS = new Set([
  Code.Unknown,
  Code.DeadlineExceeded,
  Code.Unimplemented,
  Code.Internal,
  Code.Unavailable,
  Code.DataLoss,
]);

function endSpan(span: Span, err: unknown): void {
  const code = callCode(err);
  span.setAttribute("rpc.grpc.status_code", code ?? 0);
  span.setAttribute("rpc.response.status_code", grpcCodeName(code));
  if (code !== undefined && SERVER_ERRORS.has(code)) {
    span.setStatus({ code: SpanStatusCode.ERROR, message: grpcCodeName(code) });
    if (err instanceof Error) span.recordException(err);
  }
  span.end();
}

/** Runs every step of `source` with `ctx` active: a streaming handler's body runs lazily, as the transport pulls. */
export async function* iterateInContext<T>(source: AsyncIterable<T>, ctx: Context): AsyncIterable<T> {
  const it = context.with(ctx, () => source[Symbol.asyncIterator]());
  let done = false;
  try {
    for (;;) {
      const step = await context.with(ctx, () => it.next());
      if (step.done) {
        done = true;
        return;
      }
      yield step.value;
    }
  } finally {
    if (!done) await context.with(ctx, async () => it.return?.());
  }
}

/**
 * Server span per call, child of the caller's W3C `traceparent`; the rest of the chain and the
 * handler run with it active, so SQLite, outbox and outbound calls join the trace. On grpc-js,
 * @opentelemetry/instrumentation-grpc (see register-instrumentation.ts) has already opened the
 * server span from the metadata: that one is annotated instead of nesting a second one.
 */
export function tracingInterceptor(tracer: Tracer): KernelInterceptor {
  return (next) => async (call) => {
    const peer = call.ctx.values.get(kPeer);
    const attributes: Attributes = {
      "rpc.system": call.ctx.protocolName === "connect" ? "connect_rpc" : "grpc",
      "rpc.service": call.service.typeName,
      "rpc.method": call.method.name,
      "nops.transport": peer.transport,
    };
    const opened = trace.getActiveSpan();
    if (peer.transport === "grpc-js" && opened && isSpanContextValid(opened.spanContext())) {
      opened.setAttributes(attributes);
      return next(call);
    }
    const parent = extractTraceHeaders(call.ctx.requestHeader, context.active());
    const span = tracer.startSpan(
      `${call.service.typeName}/${call.method.name}`,
      { kind: SpanKind.SERVER, attributes },
      parent,
    );
    const active = trace.setSpan(parent, span);
    const result = await context
      .with(active, () => next(call))
      .catch((err: unknown) => {
        endSpan(span, err);
        throw err;
      });
    if (result.kind === "unary") {
      endSpan(span, undefined);
      return result;
    }
    return {
      kind: "stream",
      output: observeStream(iterateInContext(result.output, active), (err) => endSpan(span, err)),
    };
  };
}
