import type { Interceptor as ConnectInterceptor } from "@connectrpc/connect";
import { egressDeniedError, type EgressGuard, type EgressRequest } from "./egress-guard.js";
import { OVERRIDE_HEADER } from "./override-grant.js";
import { TENANT_HEADER, forwardableTraceContext } from "./outbound-headers.js";

export { TENANT_HEADER };

/** Drops a malformed traceparent/tracestate from fetch-style headers. */
export function dropMalformedTraceHeaders(headers: Headers): void {
  const keep = forwardableTraceContext(headers.get("traceparent") ?? undefined, headers.get("tracestate") ?? undefined);
  if (keep.traceparent === undefined) headers.delete("traceparent");
  if (keep.tracestate === undefined) headers.delete("tracestate");
}

/**
 * Judges a whole outbound call before any byte of it is sent: it may edit `headers` (drop what must
 * not leave), throws to refuse, and answers undefined when it decided at once (no extra turn).
 */
export type EgressPreSend = (
  path: string,
  headers: Record<string, string>,
  message: unknown,
  signal?: AbortSignal,
) => Promise<void> | undefined;

/**
 * The Egress Guard as a pre-send hook of a hand-framed gRPC client (the router's agent client,
 * src/routing/agent-h2-client.ts): it judges the whole call (its one request message and its
 * headers) before any byte is sent, drops the break-glass grant and malformed trace headers from
 * `headers`, and throws PERMISSION_DENIED when the guard blocks. A cached verdict decides at once
 * (undefined: no extra turn). `destination` names the client; the method path is appended.
 */
export function createEgressPreSend(
  guard: EgressGuard,
  destination: string,
  /**
   * What of the message is data to classify (default: all of it). A selector leaves out fields the
   * kernel mints itself (deadlines, request ids, attempt numbers) that would otherwise make every
   * message unique and defeat the verdict cache.
   */
  select: (path: string, message: unknown) => unknown = (_path, message) => message,
): EgressPreSend {
  return (path, headers, message, signal) => {
    const override = headers[OVERRIDE_HEADER];
    // The grant is for the guard only; it never leaves the kernel.
    delete headers[OVERRIDE_HEADER];
    const keep = forwardableTraceContext(headers.traceparent, headers.tracestate);
    if (keep.traceparent === undefined) delete headers.traceparent;
    if (keep.tracestate === undefined) delete headers.tracestate;
    const to = `${destination}${path}`;
    const request: EgressRequest = {
      tenant: headers[TENANT_HEADER] ?? "",
      transport: "grpc",
      destination: to,
      dataType: path,
      payload: select(path, message),
      headers: Object.entries(headers),
      record: { destination: to, dataType: path },
      override,
      signal,
    };
    // One preparation of the call's text whether or not the DGE has to be asked.
    const decision = guard.decide(request);
    if (decision instanceof Promise) {
      return decision.then((d) => {
        if (!d.allowed) throw egressDeniedError(d);
      });
    }
    if (!decision.allowed) throw egressDeniedError(decision);
    return undefined;
  };
}

/** Connect client interceptor: checks every request message; a blocked call throws PERMISSION_DENIED before sending. */
export function createConnectEgressInterceptor(guard: EgressGuard, destination: string): ConnectInterceptor {
  return (next) => async (req) => {
    const tenant = req.header.get(TENANT_HEADER) ?? "";
    let override = req.header.get(OVERRIDE_HEADER) ?? undefined;
    req.header.delete(OVERRIDE_HEADER);
    dropMalformedTraceHeaders(req.header);
    const path = `/${req.service.typeName}/${req.method.name}`;
    const check = async (payload: unknown): Promise<void> => {
      const d = await guard.check({
        tenant,
        transport: "connect",
        destination: `${destination}${path}`,
        dataType: req.method.input.typeName,
        payload,
        // Read at each message: headers are what the call sends when it opens.
        headers: [...req.header.entries()],
        record: { destination: `${destination}${path}`, dataType: req.method.input.typeName },
        override,
        signal: req.signal,
      });
      override = undefined;
      if (!d.allowed) throw egressDeniedError(d);
    };
    if (!req.stream) {
      await check(req.message);
      return next(req);
    }
    // Streaming: the first message is checked before the stream opens, the rest as they go.
    const source = req.message[Symbol.asyncIterator]();
    const first = await source.next();
    if (!first.done) await check(first.value);
    async function* guarded(): AsyncGenerator<unknown> {
      if (first.done) return;
      yield first.value;
      for (let r = await source.next(); !r.done; r = await source.next()) {
        await check(r.value);
        yield r.value;
      }
    }
    return next({ ...req, message: guarded() as typeof req.message });
  };
}
