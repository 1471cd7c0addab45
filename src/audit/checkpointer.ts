import { create } from "@bufbuild/protobuf";
import type { Clock } from "../common/index.js";
import type { Db, EventSink } from "../store/index.js";
import type { Logger } from "../telemetry/index.js";
import { AuditCheckpointIssuedSchema } from "../../gen/nops/events/v1/audit_events_pb.js";
import type { AuditLog } from "./audit-log.js";
import { signCheckpoint, type SignedCheckpoint } from "./checkpoint.js";
import type { Signer } from "./signer.js";

/** The event type a checkpoint is published as. */
export const CHECKPOINT_EVENT_TYPE = "audit.checkpoint.issued.v1";

/** Options of checkpoint issuance. */
export interface CheckpointerOptions {
  /** The log's origin line, e.g. "nops.kernel/edge-1/audit". */
  origin: string;
  /** How often a checkpoint is signed when the log grew; 0 signs on demand only. */
  intervalMs: number;
  /** Tenant the checkpoint events are written under. */
  systemTenant: string;
}

/** Signs checkpoints of the audit log on a cadence and on demand. */
export interface Checkpointer {
  /** Signs a checkpoint of the current tree if it grew since the last one; returns the newest checkpoint. */
  issue(): Promise<SignedCheckpoint>;
  /** Stops the cadence and waits for a signing in flight. */
  stop(): Promise<void>;
}

/**
 * Creates the checkpointer. Each new checkpoint is stored and, in the same transaction, written
 * to the outbox as an audit.checkpoint.issued.v1 event carrying the consistency proof from the
 * previous checkpoint: the relay takes it to the hub, where the witness checks it.
 */
export function createCheckpointer(
  deps: { db: Db; audit: AuditLog; signer: Signer; events: EventSink; clock: Clock; logger: Logger },
  options: CheckpointerOptions,
): Checkpointer {
  const { db, audit, signer, events, clock, logger } = deps;
  let chain: Promise<unknown> = Promise.resolve();

  const record = db.transaction((c: SignedCheckpoint, previousSize: number, proof: Uint8Array[]) => {
    audit.saveCheckpoint(c, clock.now());
    events.append({
      type: CHECKPOINT_EVENT_TYPE,
      tenant: options.systemTenant,
      schema: AuditCheckpointIssuedSchema,
      payload: create(AuditCheckpointIssuedSchema, {
        origin: c.origin,
        checkpoint: c.note,
        treeSize: BigInt(c.size),
        previousTreeSize: BigInt(previousSize),
        consistencyProof: proof,
      }),
    });
  });

  const issueNow = async (): Promise<SignedCheckpoint> => {
    const latest = audit.latestCheckpoint();
    const head = audit.head();
    if (latest && latest.origin === options.origin && latest.size >= head.size) return latest;
    const previousSize = latest?.origin === options.origin ? latest.size : 0;
    const signed = await signCheckpoint({ origin: options.origin, size: head.size, root: head.root }, [signer]);
    // The tree only grows, so the proof from the previous checkpoint to this size is still valid.
    record(signed, previousSize, audit.consistencyProof(previousSize, signed.size));
    logger.info({ treeSize: signed.size, previousTreeSize: previousSize }, "audit checkpoint signed");
    return signed;
  };

  // One signing at a time: a checkpoint is always built on the one before it.
  const issue = (): Promise<SignedCheckpoint> => {
    const next = chain.then(issueNow, issueNow);
    chain = next.catch(() => undefined);
    return next;
  };

  const timer =
    options.intervalMs > 0
      ? setInterval(() => {
          issue().catch((e: unknown) => logger.error({ err: e }, "audit checkpoint failed"));
        }, options.intervalMs)
      : undefined;
  timer?.unref();

  return {
    issue,
    async stop() {
      if (timer) clearInterval(timer);
      await chain;
    },
  };
}
