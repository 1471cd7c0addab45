import { Code, ConnectError } from "@connectrpc/connect";
import type { Meter } from "@opentelemetry/api";
import { kPeer, methodPath, observeStream, type CallRequest, type KernelInterceptor } from "../server/index.js";
import { createTally } from "./tally.js";

/** Counter of served calls, labelled {rpc, code, transport}. */
export const RPC_REQUESTS_METRIC = "rpc_server_requests_total";
/** Histogram of call durations in ms (to the end of the stream for streams), labelled {rpc, code, transport}. */
export const RPC_DURATION_METRIC = "rpc_server_duration_ms";

// gRPC status names (grpc/doc/statuscodes.md), indexed by code; Connect's Code enum uses the same numbers.
const GRPC_CODE_NAMES = [
  "OK",
  "CANCELLED",
  "UNKNOWN",
  "INVALID_ARGUMENT",
  "DEADLINE_EXCEEDED",
  "NOT_FOUND",
  "ALREADY_EXISTS",
  "PERMISSION_DENIED",
  "RESOURCE_EXHAUSTED",
  "FAILED_PRECONDITION",
  "ABORTED",
  "OUT_OF_RANGE",
  "UNIMPLEMENTED",
  "INTERNAL",
  "UNAVAILABLE",
  "DATA_LOSS",
  "UNAUTHENTICATED",
] as const;

/** The code a call ends with: OK without error, the ConnectError's code, INTERNAL for anything unmapped. */
export function callCode(err: unknown): Code | undefined {
  if (err === undefined) return undefined;
  return err instanceof ConnectError ? err.code : Code.Internal;
}

/** gRPC status name of a code ("OK" for undefined), as used in metric labels and span attributes. */
export function grpcCodeName(code: Code | undefined): string {
  return GRPC_CODE_NAMES[code ?? 0] ?? "UNKNOWN";
}

// Durations of edge RPCs: sub-millisecond cache hits up to the deadline cap.
const DURATION_BUCKETS_MS = [0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 30_000];

/**
 * Request count and latency per RPC, code and transport. Place it outside the error-mapping link
 * so it sees the code the caller gets (an unmapped error counts as INTERNAL either way).
 */
export function rpcMetricsInterceptor(meter: Meter): KernelInterceptor {
  const requests = createTally(meter, RPC_REQUESTS_METRIC, {
    labels: ["rpc", "code", "transport"],
    description: "RPCs served, by method, status code and transport",
  });
  const duration = meter.createHistogram(RPC_DURATION_METRIC, {
    description: "RPC latency from the first interceptor to the last response message",
    unit: "ms",
    advice: { explicitBucketBoundaries: DURATION_BUCKETS_MS },
  });
  // The tally's series attributes serve the histogram too, so a call records without building a string or an object.
  const record = (call: CallRequest, started: number, err: unknown): void => {
    const rpc = methodPath(call.method);
    const attributes = requests.add(1, rpc, grpcCodeName(callCode(err)), call.ctx.values.get(kPeer).transport);
    duration.record(performance.now() - started, attributes);
  };
  return (next) => async (call) => {
    const started = performance.now();
    let result;
    try {
      result = await next(call);
    } catch (err) {
      record(call, started, err);
      throw err;
    }
    if (result.kind === "unary") {
      record(call, started, undefined);
      return result;
    }
    return { kind: "stream", output: observeStream(result.output, (err) => record(call, started, err)) };
  };
}
