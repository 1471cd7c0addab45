import * as grpc from "@grpc/grpc-js";
import { fromBinary, toBinary } from "@bufbuild/protobuf";
import {
  AgentService,
  HandleRequestSchema,
  HandleResponseSchema,
  HandleStreamRequestSchema,
  HandleStreamResponseSchema,
  type HandleRequest,
  type HandleResponse,
  type HandleStreamRequest,
  type HandleStreamResponse,
} from "../../gen/nops/agent/v1/agent_pb.js";
import { type Clock, KernelError } from "../common/index.js";
import { bytesText, isOpaqueId } from "../egress/index.js";
import type { Logger } from "../telemetry/index.js";
import type { ChannelPoolOptions } from "./routing-options.js";

/** An endpoint the pool cannot dial (unknown scheme, no port). */
export class EndpointError extends KernelError {
  override name = "EndpointError";
}

/** Per-call settings of an outbound agent call. */
export interface AgentCallOptions {
  deadline: Date;
  metadata: grpc.Metadata;
  signal: AbortSignal;
}

/** A pooled grpc-js client of one agent endpoint. */
export interface AgentClient {
  /** True when the channel has a ready connection: a call now measures the agent, not a handshake. */
  connected(): boolean;
  handle(request: HandleRequest, options: AgentCallOptions): Promise<HandleResponse>;
  handleStream(
    request: HandleStreamRequest,
    options: AgentCallOptions,
  ): grpc.ClientReadableStream<HandleStreamResponse>;
}

/**
 * The data of an agent call, for the Egress Guard: capability, content type, payload, tracestate
 * and a request id the caller chose. Left out: the deadline and attempt (kernel-minted numbers),
 * a traceparent (validated hex ids) and a request id that is a UUID or trace id; they change on
 * every call and would defeat the verdict cache without carrying data. The call's metadata is
 * classified by the interceptor as well.
 */
export function agentCallData(_path: string, message: unknown): unknown {
  const inv = (message as Partial<HandleRequest | HandleStreamRequest>).invocation;
  if (!inv) return message;
  const extra = [inv.tracestate, isOpaqueId(inv.requestId) ? "" : inv.requestId].filter((s) => s !== "");
  // As text: an object would be JSON-encoded by the guard on every call.
  return [inv.capability, inv.contentType, bytesText(inv.payload), ...extra].join("\n");
}

/** One channel per agent endpoint, reused by every call and closed when the endpoint goes away. */
export interface AgentChannelPool {
  /** The client of an endpoint ("host:port" or "grpc(s)://host:port"); throws EndpointError. */
  get(endpoint: string): AgentClient;
  /** Keeps these endpoints' channels alive (they are still listed by the registry). */
  touch(endpoints: Iterable<string>): void;
  /** Closes an endpoint's channel now (agent deregistered). */
  forget(endpoint: string): void;
  /** Endpoints with an open channel. */
  endpoints(): string[];
  /** Closes every channel and stops the idle sweep. */
  close(): void;
}

/** Dependencies of the pool; the lead wires the Egress Guard interceptor and SPIFFE mTLS credentials here. */
export interface AgentChannelPoolDeps {
  credentials: grpc.ChannelCredentials;
  interceptors?: grpc.Interceptor[];
  clock: Clock;
  logger: Logger;
}

const HANDLE_PATH = `/${AgentService.typeName}/${AgentService.method.handle.name}`;
const HANDLE_STREAM_PATH = `/${AgentService.typeName}/${AgentService.method.handleStream.name}`;

/** "grpc://h:p" / "grpcs://h:p" / "h:p" -> "h:p" (grpc-js target); anything else is an EndpointError. */
export function grpcTarget(endpoint: string): string {
  const m = /^(?:(grpcs?):\/\/)?([^/]+?)\/?$/.exec(endpoint);
  if (!m || (endpoint.includes("://") && !m[1]))
    throw new EndpointError(`endpoint ${JSON.stringify(endpoint)} is not a gRPC endpoint`);
  const hostPort = m[2]!;
  if (!/:\d{1,5}$/.test(hostPort)) throw new EndpointError(`endpoint ${JSON.stringify(endpoint)} has no port`);
  return hostPort;
}

/** Creates the pool. */
export function createAgentChannelPool(deps: AgentChannelPoolDeps, options: ChannelPoolOptions): AgentChannelPool {
  const clients = new Map<string, { client: grpc.Client; api: AgentClient; lastSeen: number }>();
  const channelOptions: grpc.ChannelOptions = {
    "grpc.initial_reconnect_backoff_ms": Math.min(200, options.maxReconnectBackoffMs),
    "grpc.max_reconnect_backoff_ms": options.maxReconnectBackoffMs,
    "grpc.enable_retries": 0, // the router retries; grpc-js transparent retries would bypass its budget
  };

  function open(target: string): { client: grpc.Client; api: AgentClient } {
    const client = new grpc.Client(target, deps.credentials, {
      ...channelOptions,
      interceptors: deps.interceptors ?? [],
    });
    const api: AgentClient = {
      connected: () => client.getChannel().getConnectivityState(false) === grpc.connectivityState.READY,
      handle(request, call) {
        return new Promise<HandleResponse>((resolve, reject) => {
          const c = client.makeUnaryRequest(
            HANDLE_PATH,
            (m: HandleRequest) => Buffer.from(toBinary(HandleRequestSchema, m)),
            (b: Buffer) => fromBinary(HandleResponseSchema, b),
            request,
            call.metadata,
            { deadline: call.deadline },
            (err, value) => {
              call.signal.removeEventListener("abort", cancel);
              if (err) reject(err);
              else resolve(value!);
            },
          );
          const cancel = (): void => c.cancel();
          if (call.signal.aborted) c.cancel();
          else call.signal.addEventListener("abort", cancel, { once: true });
        });
      },
      handleStream(request, call) {
        const c = client.makeServerStreamRequest(
          HANDLE_STREAM_PATH,
          (m: HandleStreamRequest) => Buffer.from(toBinary(HandleStreamRequestSchema, m)),
          (b: Buffer) => fromBinary(HandleStreamResponseSchema, b),
          request,
          call.metadata,
          { deadline: call.deadline },
        );
        const cancel = (): void => c.cancel();
        if (call.signal.aborted) c.cancel();
        else call.signal.addEventListener("abort", cancel, { once: true });
        c.on("close", () => call.signal.removeEventListener("abort", cancel));
        return c;
      },
    };
    return { client, api };
  }

  const sweep = deps.clock.setInterval(
    () => {
      const cutoff = deps.clock.now() - options.idleMs;
      for (const [target, entry] of clients) {
        if (entry.lastSeen < cutoff) {
          deps.logger.debug({ target }, "closing idle agent channel");
          entry.client.close();
          clients.delete(target);
        }
      }
    },
    Math.max(1000, Math.floor(options.idleMs / 2)),
  );
  sweep.unref();

  return {
    get(endpoint) {
      const target = grpcTarget(endpoint);
      let entry = clients.get(target);
      if (!entry) {
        entry = { ...open(target), lastSeen: 0 };
        clients.set(target, entry);
      }
      entry.lastSeen = deps.clock.now();
      return entry.api;
    },
    touch(endpoints) {
      const now = deps.clock.now();
      for (const e of endpoints) {
        try {
          const entry = clients.get(grpcTarget(e));
          if (entry) entry.lastSeen = now;
        } catch {
          // Unroutable endpoints never get a channel; nothing to keep alive.
        }
      }
    },
    forget(endpoint) {
      const target = grpcTarget(endpoint);
      clients.get(target)?.client.close();
      clients.delete(target);
    },
    endpoints: () => [...clients.keys()],
    close() {
      deps.clock.clearInterval(sweep);
      for (const entry of clients.values()) entry.client.close();
      clients.clear();
    },
  };
}
