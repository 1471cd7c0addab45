import type { JetStreamManager } from "@nats-io/jetstream";
import type { OutboxStore } from "../store/index.js";
import type { Clock } from "../common/index.js";
import { hubEdgeStreamConfig } from "./nats-config.js";

/** Settings of hub confirmation (a subset of EventBusOptions). */
export interface HubConfirmerOptions {
  streamName: string;
  edgeDomain: string;
  hubStreamName: string;
  ensureHubStream: boolean;
  hubStreamReplicas: number;
  edgeId: string;
  pruneAfterMs: number;
  duplicateWindowMs: number;
}

/** Marks outbox rows confirmed once the hub stream holds them, and prunes confirmed rows. */
export interface HubConfirmer {
  /**
   * Asks the hub (through the leaf, JetStream domain of the hub) how far it has sourced the
   * edge stream, marks rows up to there confirmed and prunes old confirmed rows. Throws when
   * the hub cannot be asked (unreachable). Returns the highest edge sequence the hub holds.
   */
  confirm(hub: JetStreamManager): Promise<number>;
}

/**
 * The hub stream sources only this edge's stream, in edge-sequence order (the sourcing consumer
 * is ordered and restarts after the last sequence it stored), so the Nats-Stream-Source header
 * of the hub stream's last message ("<stream>[:<hash>] <edge-seq>") says every edge sequence
 * up to it is at the hub.
 */
export function parseSourcedSequence(header: string | undefined, streamName: string): number | undefined {
  if (!header) return undefined;
  const [name, seq] = header.trim().split(/\s+/);
  if (!name || (name !== streamName && !name.startsWith(`${streamName}:`))) return undefined;
  const n = Number(seq);
  return Number.isSafeInteger(n) && n > 0 ? n : undefined;
}

/** Creates the hub confirmer. */
export function createHubConfirmer(
  deps: { outbox: OutboxStore; clock: Clock },
  options: HubConfirmerOptions,
): HubConfirmer {
  const { outbox, clock } = deps;
  let hubStreamReady = false;
  return {
    async confirm(hub) {
      if (!hubStreamReady && options.ensureHubStream) {
        try {
          await hub.streams.info(options.hubStreamName);
        } catch (err) {
          if (!(err instanceof Error && /stream not found/i.test(err.message))) throw err;
          await hub.streams.add(
            hubEdgeStreamConfig({
              edgeId: options.edgeId,
              edgeDomain: options.edgeDomain,
              streamName: options.streamName,
              hubStreamName: options.hubStreamName,
              replicas: options.hubStreamReplicas,
              duplicateWindowMs: options.duplicateWindowMs,
            }),
          );
        }
        hubStreamReady = true;
      }
      const info = await hub.streams.info(options.hubStreamName);
      let seq = 0;
      if (info.state.messages > 0) {
        const last = await hub.streams.getMessage(options.hubStreamName, { seq: info.state.last_seq });
        seq = parseSourcedSequence(last?.header?.get("Nats-Stream-Source"), options.streamName) ?? 0;
      }
      const now = clock.now();
      if (seq > 0) outbox.confirmUpTo(seq, now);
      outbox.pruneConfirmed(now - options.pruneAfterMs);
      return seq;
    },
  };
}
