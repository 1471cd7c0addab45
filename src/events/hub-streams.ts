import {
  DiscardPolicy,
  RetentionPolicy,
  StorageType,
  type JetStreamManager,
  type StreamConfig,
  type StreamInfo,
  type StreamSource,
} from "@nats-io/jetstream";
import { toBinary } from "@bufbuild/protobuf";
import type { JetStreamClient, PubAck } from "@nats-io/jetstream";
import { ConfigError, EDGE_ID_PATTERN } from "../common/index.js";
import type { Db } from "../store/index.js";
import { KernelCommandSchema, type KernelCommand } from "../../gen/nops/events/v1/kernel_command_pb.js";
import { edgeDeliverPrefix, hubDeliverPrefix, hubEdgeStreamConfig } from "./nats-config.js";

/**
 * Stream and subject names of the bus between edges and the hub (docs/events.md, "Streams of the
 * bus"). Edge domain: NOPS_EVENTS, NOPS_DLQ, NOPS_FED_OUT, NOPS_CMD_IN, NOPS_FED_IN. Hub domain:
 * NOPS_EDGE_<EDGEID>, NOPS_CMD, NOPS_FED.
 */
export const BUS_STREAMS = {
  edgeEvents: "NOPS_EVENTS",
  edgeFedOut: "NOPS_FED_OUT",
  edgeCommandsIn: "NOPS_CMD_IN",
  edgeFedIn: "NOPS_FED_IN",
  hubCommands: "NOPS_CMD",
  hubFed: "NOPS_FED",
} as const;

/** Subject of a command for one edge: nops.cmd.<edgeId>.<kind>. */
export function commandSubject(edgeId: string, kind: string): string {
  return `nops.cmd.${edgeId}.${kind}`;
}

/** Subject of a federated event from this edge to a target edge: nops.fed.<targetEdge>.<tenant>.<type>. */
export function federatedSubject(targetEdge: string, tenant: string, type: string): string {
  return `nops.fed.${targetEdge}.${tenant}.${type}`;
}

/** One edge the hub knows. */
export interface HubEdge {
  /** The edge id (events.edgeId). */
  edgeId: string;
  /** Its leaf's JetStream domain (events.edgeDomain). @default edgeId */
  domain?: string;
}

/** What ensureHubStreams creates. */
export interface HubStreamsOptions {
  edges: readonly HubEdge[];
  /** Replicas of every hub stream (3 on the clustered hub, 1 on a single server). @default 1 */
  replicas?: number;
  /** Deduplication window of NOPS_CMD and the edge streams (Nats-Msg-Id). @default 2 h */
  duplicateWindowMs?: number;
  /** Max age of NOPS_CMD and NOPS_FED: size it above the longest edge outage you accept. @default 7 days */
  maxAgeMs?: number;
}

const DEFAULT_WINDOW_MS = 2 * 3600_000;
const DEFAULT_MAX_AGE_MS = 7 * 24 * 3600_000;

/**
 * A source in another JetStream domain, delivered on `deliver`: the prefix the per-edge hub link
 * lets through in that direction (hubDeliverPrefix / edgeDeliverPrefix, docs/events.md).
 */
function externalSource(stream: string, domain: string, deliver: string, filter?: string): StreamSource {
  return {
    name: stream,
    ...(filter ? { filter_subject: filter } : {}),
    external: { api: `$JS.${domain}.API`, deliver },
  };
}

async function upsert(jsm: JetStreamManager, config: Partial<StreamConfig> & { name: string }): Promise<void> {
  try {
    await jsm.streams.info(config.name);
  } catch (err) {
    if (!(err instanceof Error && /stream not found/i.test(err.message))) throw err;
    await jsm.streams.add(config);
    return;
  }
  await jsm.streams.update(config.name, config);
}

/**
 * The hub's streams, in one place for the kernel's tests and the operator tooling: NOPS_CMD (the
 * commands for every edge, subjects nops.cmd.>), one NOPS_EDGE_<EDGEID> per edge (sources that
 * edge's NOPS_EVENTS) and NOPS_FED (sources every edge's NOPS_FED_OUT). Idempotent: existing
 * streams are updated to this configuration (a new edge adds a source). Call it with a
 * JetStreamManager bound to the hub's domain.
 */
export async function ensureHubStreams(jsm: JetStreamManager, options: HubStreamsOptions): Promise<void> {
  const replicas = options.replicas ?? 1;
  if (!Number.isInteger(replicas) || replicas < 1 || replicas > 5)
    throw new ConfigError("hub streams: replicas must be an integer in [1, 5]");
  const seen = new Set<string>();
  for (const [i, e] of options.edges.entries()) {
    if (!EDGE_ID_PATTERN.test(e.edgeId))
      throw new ConfigError(`hub streams: edges[${i}].edgeId must match ${EDGE_ID_PATTERN}`);
    if (e.domain !== undefined && !EDGE_ID_PATTERN.test(e.domain))
      throw new ConfigError(`hub streams: edges[${i}].domain must match ${EDGE_ID_PATTERN}`);
    if (seen.has(e.edgeId)) throw new ConfigError(`hub streams: edges[${i}].edgeId ${e.edgeId} is listed twice`);
    seen.add(e.edgeId);
  }
  const window = (options.duplicateWindowMs ?? DEFAULT_WINDOW_MS) * 1_000_000;
  const maxAge = (options.maxAgeMs ?? DEFAULT_MAX_AGE_MS) * 1_000_000;
  const common = { num_replicas: replicas, storage: StorageType.File, retention: RetentionPolicy.Limits };
  await upsert(jsm, {
    name: BUS_STREAMS.hubCommands,
    subjects: ["nops.cmd.>"],
    ...common,
    // A full command stream refuses new commands instead of dropping ones an edge has not read.
    discard: DiscardPolicy.New,
    max_age: maxAge,
    duplicate_window: window,
  });
  for (const e of options.edges) {
    await upsert(jsm, {
      ...common,
      ...hubEdgeStreamConfig({
        edgeId: e.edgeId,
        edgeDomain: e.domain,
        replicas,
        duplicateWindowMs: options.duplicateWindowMs ?? DEFAULT_WINDOW_MS,
      }),
    });
  }
  if (options.edges.length > 0) {
    await upsert(jsm, {
      name: BUS_STREAMS.hubFed,
      ...common,
      discard: DiscardPolicy.New,
      max_age: maxAge,
      sources: options.edges.map((e) =>
        externalSource(BUS_STREAMS.edgeFedOut, e.domain ?? e.edgeId, hubDeliverPrefix(e.edgeId)),
      ),
    });
  }
}

/** The edge's NOPS_CMD_IN: sources the hub's NOPS_CMD, this edge's subjects only. */
export function edgeCommandStreamConfig(
  edgeId: string,
  hubDomain: string,
  maxAgeMs: number,
): Partial<StreamConfig> & { name: string } {
  return {
    name: BUS_STREAMS.edgeCommandsIn,
    storage: StorageType.File,
    retention: RetentionPolicy.Limits,
    max_age: maxAgeMs * 1_000_000,
    sources: [externalSource(BUS_STREAMS.hubCommands, hubDomain, edgeDeliverPrefix(edgeId), `nops.cmd.${edgeId}.>`)],
  };
}

/**
 * Publishes a command to the hub's NOPS_CMD (a JetStreamClient of the hub's domain): subject
 * nops.cmd.<target_edge>.<kind>, Nats-Msg-Id = command id, so a retried publish stores it once.
 */
export async function publishCommand(js: JetStreamClient, command: KernelCommand): Promise<PubAck> {
  if (!EDGE_ID_PATTERN.test(command.targetEdge))
    throw new ConfigError(`command target_edge must match ${EDGE_ID_PATTERN}`);
  if (command.id === "") throw new ConfigError("command id is empty");
  const kind = command.command.case;
  if (!kind) throw new ConfigError("command has no command set");
  return js.publish(commandSubject(command.targetEdge, kind), toBinary(KernelCommandSchema, command), {
    msgID: command.id,
  });
}

/** Creates or updates a stream (edge side). */
export const ensureStream = upsert;

/** Where a consumer of a bus stream has got to (table bus_stream_progress): its last settled sequence and when. */
export interface StreamProgress {
  get(key: string): { lastSeq: number; updatedAt: number } | undefined;
  /** Run it inside the transaction that settles the message, when there is one. */
  set(key: string, lastSeq: number, at: number): void;
}

/** The bus stream positions kept in the kernel's database. */
export function createStreamProgress(db: Db): StreamProgress {
  const get = db.prepare<[string], { last_seq: number; updated_at: number }>(
    "SELECT last_seq, updated_at FROM bus_stream_progress WHERE stream = ?",
  );
  const set = db.prepare<[string, number, number]>(
    `INSERT INTO bus_stream_progress (stream, last_seq, updated_at) VALUES (?, ?, ?)
     ON CONFLICT(stream) DO UPDATE SET last_seq = excluded.last_seq, updated_at = excluded.updated_at`,
  );
  return {
    get(key) {
      const row = get.get(key);
      return row && { lastSeq: row.last_seq, updatedAt: row.updated_at };
    },
    set: (key, lastSeq, at) => void set.run(key, lastSeq, at),
  };
}

/** When the first message after `seq` was stored in `stream`, when there is one (lag in seconds). */
export async function oldestAfter(
  jsm: JetStreamManager,
  stream: string,
  seq: number,
  lastSeq: number,
): Promise<number | undefined> {
  if (seq >= lastSeq) return undefined;
  const m = await jsm.streams.getMessage(stream, { seq: seq + 1 }).catch(() => null);
  return m ? m.time.getTime() : undefined;
}

/** The link of a stream sourcing from the hub (its first source): messages behind and ms since it was active. */
export function sourceLink(info: StreamInfo): { lag: number; idleMs: number | undefined } | undefined {
  const source = info.sources?.[0];
  if (!source) return undefined;
  return { lag: source.lag, idleMs: source.active >= 0 ? Math.round(source.active / 1_000_000) : undefined };
}
