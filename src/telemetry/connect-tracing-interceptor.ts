import { ConnectError, type Interceptor } from "@connectrpc/connect";
import { SpanKind, SpanStatusCode, context, trace, type Span, type Tracer } from "@opentelemetry/api";
import { observeStream } from "../server/index.js";
import { grpcCodeName } from "./rpc-metrics-interceptor.js";
import { injectTraceHeaders } from "./trace-context.js";
import { iterateInContext } from "./tracing-interceptor.js";

function end(span: Span, err: unknown): void {
  if (err !== undefined) {
    const code = ConnectError.from(err).code;
    span.setAttribute("rpc.grpc.status_code", code);
    span.setStatus({ code: SpanStatusCode.ERROR, message: grpcCodeName(code) });
  } else {
    span.setAttribute("rpc.grpc.status_code", 0);
  }
  span.end();
}

/**
 * Client-side Connect interceptor for every outbound connect-es call (DGE client, approved
 * clients): a CLIENT span child of the active context, and its W3C `traceparent` in the request
 * headers so the callee continues the trace. Add it to `interceptors` of createConnectTransport /
 * createGrpcTransport, before the egress interceptor so a blocked call is traced too.
 */
export function connectTracingInterceptor(tracer: Tracer): Interceptor {
  return (next) => async (req) => {
    let host = "";
    try {
      host = new URL(req.url).host;
    } catch {
      // a relative or unusual base URL: leave server.address out
    }
    const span = tracer.startSpan(`${req.service.typeName}/${req.method.name}`, {
      kind: SpanKind.CLIENT,
      attributes: {
        "rpc.system": "connect_rpc",
        "rpc.service": req.service.typeName,
        "rpc.method": req.method.name,
        ...(host ? { "server.address": host } : {}),
      },
    });
    const ctx = trace.setSpan(context.active(), span);
    injectTraceHeaders(req.header, ctx);
    let res;
    try {
      res = await context.with(ctx, () => next(req));
    } catch (err) {
      end(span, err);
      throw err;
    }
    if (!res.stream) {
      end(span, undefined);
      return res;
    }
    return { ...res, message: observeStream(iterateInContext(res.message, ctx), (err) => end(span, err)) };
  };
}
