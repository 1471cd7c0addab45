import type { ConnectionOptions } from "node:tls";
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
import { bytesText, isOpaqueId, type EgressPreSend } from "../egress/index.js";
import type { Logger } from "../telemetry/index.js";
import { createAgentH2Client, type AgentH2Client, type H2CallOptions, type H2Stream } from "./agent-h2-client.js";
import type { ChannelPoolOptions } from "./routing-options.js";

/** An endpoint the pool cannot dial (unknown scheme, no port). */
export class EndpointError extends KernelError {
  override name = "EndpointError";
}

/** Per-call settings of an outbound agent call: the client's own. */
export type AgentCallOptions = H2CallOptions;

/** A pooled gRPC client of one agent endpoint (pooled node:http2 sessions, src/routing/agent-h2-client.ts). */
export interface AgentClient {
  /** True when a session is connected: a call now measures the agent, not a handshake. */
  connected(): boolean;
  handle(request: HandleRequest, options: AgentCallOptions): Promise<HandleResponse>;
  handleStream(request: HandleStreamRequest, options: AgentCallOptions): H2Stream<HandleStreamResponse>;
}

/**
 * The data of an agent call, for the Egress Guard: capability, content type, payload, tracestate
 * and a request id the caller chose. Left out: the deadline and attempt (kernel-minted numbers),
 * a traceparent (validated hex ids) and a request id that is a UUID or trace id; they change on
 * every call and would defeat the verdict cache without carrying data. The call's metadata is
 * classified by the pre-send hook as well.
 */
export function agentCallData(_path: string, message: unknown): unknown {
  const inv = (message as Partial<HandleRequest | HandleStreamRequest>).invocation;
  if (!inv) return message;
  const extra = [inv.tracestate, isOpaqueId(inv.requestId) ? "" : inv.requestId].filter((s) => s !== "");
  // As text: an object would be JSON-encoded by the guard on every call.
  return [inv.capability, inv.contentType, bytesText(inv.payload), ...extra].join("\n");
}

/** Why the pool refused a peer: its certificate did not carry the SPIFFE ID the agent registered with. */
export interface PeerRejection {
  /** The SPIFFE ID the agent must present. */
  expected: string;
  /** Why verification failed (the presented ID, an untrusted chain, ...). */
  reason: string;
}

/**
 * One client (a few HTTP/2 sessions) per agent endpoint and expected SPIFFE ID, reused by every
 * call and closed when the endpoint goes away.
 */
export interface AgentChannelPool {
  /**
   * The client of an endpoint ("host:port" or "grpc(s)://host:port") whose server must present
   * `expectedId` on every connection (with mTLS credentials); throws EndpointError.
   */
  get(endpoint: string, expectedId?: string): AgentClient;
  /** The last identity rejection of that channel, until a handshake on it succeeds. */
  rejection(endpoint: string, expectedId?: string): PeerRejection | undefined;
  /** Closes that one channel now (its peer failed the identity check: stop reconnecting to it). */
  drop(endpoint: string, expectedId?: string): void;
  /** Keeps these endpoints' channels alive (they are still listed by the registry). */
  touch(endpoints: Iterable<string>): void;
  /** Closes an endpoint's channel now (agent deregistered). */
  forget(endpoint: string): void;
  /** Endpoints with an open channel. */
  endpoints(): string[];
  /** Closes every channel and stops the idle sweep. */
  close(): void;
}

/** Dependencies of the pool; the kernel wires the Egress Guard hook and the SVID-backed TLS options here. */
export interface AgentChannelPoolDeps {
  /**
   * node:tls options with the CURRENT SVID and bundles, accepting only a server that presents
   * `expectedId` (any verified id when undefined); called for every new session. `onReject` is told
   * before a refused handshake fails. Without it sessions are cleartext HTTP/2.
   */
  tls?: (expectedId: string | undefined, onReject: (err: Error) => void) => ConnectionOptions;
  /** The Egress Guard's pre-send hook: it judges every call before any byte of it is sent. */
  egress: EgressPreSend;
  clock: Clock;
  logger: Logger;
}

const HANDLE_PATH = `/${AgentService.typeName}/${AgentService.method.handle.name}`;
const HANDLE_STREAM_PATH = `/${AgentService.typeName}/${AgentService.method.handleStream.name}`;
const encodeHandle = (m: HandleRequest): Uint8Array => toBinary(HandleRequestSchema, m);
const decodeHandle = (b: Uint8Array): HandleResponse => fromBinary(HandleResponseSchema, b);
const encodeStream = (m: HandleStreamRequest): Uint8Array => toBinary(HandleStreamRequestSchema, m);
const decodeStream = (b: Uint8Array): HandleStreamResponse => fromBinary(HandleStreamResponseSchema, b);

/** "grpc://h:p" / "grpcs://h:p" / "h:p" -> "h:p"; anything else is an EndpointError. */
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
  interface Entry {
    client: AgentH2Client;
    api: AgentClient;
    lastSeen: number;
    target: string;
    expectedId: string | undefined;
    rejection?: PeerRejection;
  }
  // By target, then expected id: two agents at one address with different identities never share
  // a session, and touch/forget stay proportional to the endpoints they name.
  const byTarget = new Map<string, Map<string, Entry>>();
  const entryOf = (target: string, expectedId: string | undefined): Entry | undefined =>
    byTarget.get(target)?.get(expectedId ?? "");
  const remove = (target: string, expectedId: string | undefined, now = false): void => {
    const channels = byTarget.get(target);
    const entry = channels?.get(expectedId ?? "");
    if (!channels || !entry) return;
    if (now) entry.client.destroy();
    else entry.client.close();
    channels.delete(expectedId ?? "");
    if (channels.size === 0) byTarget.delete(target);
  };

  function open(target: string, expectedId: string | undefined): Entry {
    const entry = { target, expectedId, lastSeen: 0 } as Entry;
    const tls = deps.tls;
    const onReject = (err: Error): void => {
      entry.rejection = { expected: expectedId ?? "", reason: err.message };
      deps.logger.warn(
        { target, expected: expectedId, reason: err.message },
        "agent endpoint failed its identity check",
      );
    };
    const client = createAgentH2Client(
      {
        target,
        ...(tls ? { tls: () => tls(expectedId, onReject) } : {}),
        preSend: deps.egress,
        // A handshake that passed the identity check ends an earlier rejection.
        onConnect: () => delete entry.rejection,
        clock: deps.clock,
        logger: deps.logger,
      },
      {
        sessions: options.sessionsPerEndpoint,
        maxMessageBytes: options.maxMessageBytes,
        maxReconnectBackoffMs: options.maxReconnectBackoffMs,
      },
    );
    entry.client = client;
    entry.api = {
      connected: () => client.connected(),
      handle: (request, call) => client.unary(HANDLE_PATH, request, encodeHandle, decodeHandle, call),
      handleStream: (request, call) =>
        client.serverStream(HANDLE_STREAM_PATH, request, encodeStream, decodeStream, call),
    };
    return entry;
  }

  const sweep = deps.clock.setInterval(
    () => {
      const cutoff = deps.clock.now() - options.idleMs;
      for (const channels of [...byTarget.values()]) {
        for (const entry of [...channels.values()]) {
          if (entry.lastSeen >= cutoff) continue;
          deps.logger.debug({ target: entry.target }, "closing idle agent channel");
          remove(entry.target, entry.expectedId);
        }
      }
    },
    Math.max(1000, Math.floor(options.idleMs / 2)),
  );
  sweep.unref();

  return {
    get(endpoint, expectedId) {
      const target = grpcTarget(endpoint);
      let entry = entryOf(target, expectedId);
      if (!entry) {
        entry = open(target, expectedId);
        let channels = byTarget.get(target);
        if (!channels) byTarget.set(target, (channels = new Map<string, Entry>()));
        channels.set(expectedId ?? "", entry);
      }
      entry.lastSeen = deps.clock.now();
      return entry.api;
    },
    rejection(endpoint, expectedId) {
      try {
        return entryOf(grpcTarget(endpoint), expectedId)?.rejection;
      } catch {
        return undefined;
      }
    },
    drop(endpoint, expectedId) {
      remove(grpcTarget(endpoint), expectedId, true);
    },
    touch(endpoints) {
      const now = deps.clock.now();
      for (const e of endpoints) {
        let target: string;
        try {
          target = grpcTarget(e);
        } catch {
          continue; // Unroutable endpoints never get a channel; nothing to keep alive.
        }
        for (const entry of byTarget.get(target)?.values() ?? []) entry.lastSeen = now;
      }
    },
    forget(endpoint) {
      const target = grpcTarget(endpoint);
      for (const entry of [...(byTarget.get(target)?.values() ?? [])]) remove(target, entry.expectedId);
    },
    endpoints: () => [...byTarget.keys()],
    close() {
      deps.clock.clearInterval(sweep);
      for (const channels of byTarget.values()) for (const entry of channels.values()) entry.client.close();
      byTarget.clear();
    },
  };
}
