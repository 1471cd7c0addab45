import { fromBinary } from "@bufbuild/protobuf";
import { DeliverPolicy, type JetStreamClient, type JetStreamManager, type ConsumerMessages } from "@nats-io/jetstream";
import { headers as natsHeaders } from "@nats-io/nats-core";
import type { Meter } from "@opentelemetry/api";
import { KernelError, type Clock } from "../common/index.js";
import type { Db } from "../store/index.js";
import type { Logger } from "../telemetry/index.js";
import { KernelCommandSchema, type KernelCommand } from "../../gen/nops/events/v1/kernel_command_pb.js";
import { DLQ_HEADERS, deadLetterSubject } from "./dead-letter-mover.js";
import {
  BUS_STREAMS,
  createStreamProgress,
  edgeCommandStreamConfig,
  ensureStream,
  oldestAfter,
  sourceLink,
} from "./hub-streams.js";

/** The envelope version this kernel applies (KernelCommand.version). */
export const KERNEL_COMMAND_VERSION = 1;

/** A command that fails validation: dead-lettered with this message, nothing applied. */
export class CommandRejectedError extends KernelError {
  override name = "CommandRejectedError";
}

/** How the kernel applies and audits hub commands (wired by the composition root). */
export interface CommandHandler {
  /**
   * Applies one command through the kernel's own validated code path (peer registry, API keys)
   * and audits it. Runs inside the SQLite transaction that records the command as applied:
   * throwing CommandRejectedError rolls it back and dead-letters the command; any other error
   * rolls it back and is retried (the kernel could not apply it now, e.g. the disk is full). May return
   * what to run once that transaction committed (in-memory state that must not run ahead of the disk).
   */
  apply(command: KernelCommand): void | (() => void);
  /** Audits a dead-lettered command (inside the transaction that records it); undefined when it did not decode. */
  rejected(command: KernelCommand | undefined, seq: number, reason: string): void;
}

/** The dead-letter consumer name of commands: nops.dlq.<system>.<system>--commands. */
export const COMMANDS_CONSUMER = "commands";

/** Where the command consumer stands (GetStatus, metrics). */
export interface CommandInboxStatus {
  /** Last NOPS_CMD_IN sequence settled (applied or dead-lettered). */
  appliedSeq: number;
  /** Last NOPS_CMD_IN sequence the leaf holds (0 when unknown). */
  streamLastSeq: number;
  /** Commands sourced but not yet settled. */
  pending: number;
  /** Commands still at the hub, not yet sourced by this edge (the link's lag), when known. */
  linkLag: number;
  /** Milliseconds since the hub->edge source last delivered or checked in, when known. */
  linkIdleMs?: number;
  /** When the oldest sourced, unsettled command was stored on the leaf, when there is one. */
  oldestPendingAt?: number;
  applied: number;
  deadLettered: number;
  lastSettledAt?: number;
}

/** Options of the command consumer (a subset of EventBusOptions). */
export interface CommandInboxOptions {
  edgeId: string;
  hubDomain: string;
  systemTenant: string;
  streamMaxAgeMs: number;
  retryInitialMs: number;
  retryMaxMs: number;
}

/** Reads NOPS_CMD_IN in order and applies each command once. */
export interface CommandInbox {
  /** Creates NOPS_CMD_IN on the leaf (sources the hub's NOPS_CMD, this edge's subjects). */
  ensureStream(jsm: JetStreamManager): Promise<void>;
  /** Applies commands until stop(); resumes after the last settled sequence. */
  run(js: JetStreamClient): Promise<void>;
  stop(): void;
  status(): CommandInboxStatus;
  /** Refreshes streamLastSeq and the link lag from the leaf. */
  refresh(jsm: JetStreamManager): Promise<void>;
}

const KINDS = ["revokeApiKey", "setPeerAgreement", "quarantinePeer", "setDgePolicy"] as const;

/** Why a command cannot be applied at all, before its applier runs; undefined when it may be. */
export function checkCommandEnvelope(command: KernelCommand, edgeId: string): string | undefined {
  if (command.version !== KERNEL_COMMAND_VERSION)
    return `version ${command.version} is not supported (this kernel applies version ${KERNEL_COMMAND_VERSION})`;
  if (command.id === "") return "id is empty";
  if (command.targetEdge !== edgeId) return `target_edge ${command.targetEdge || '""'} is not this edge (${edgeId})`;
  if (command.issuedBy === "") return "issued_by is empty";
  if (!command.command.case || !(KINDS as readonly string[]).includes(command.command.case)) return "no command is set";
  return undefined;
}

/** Creates the command consumer. */
export function createCommandInbox(
  deps: { db: Db; clock: Clock; logger: Logger; meter: Meter; handler: CommandHandler },
  options: CommandInboxOptions,
): CommandInbox {
  const { db, clock, logger } = deps;
  const stream = BUS_STREAMS.edgeCommandsIn;
  const progress = createStreamProgress(db);
  const seen = db.prepare<[string], { outcome: string }>("SELECT outcome FROM kernel_commands WHERE command_id = ?");
  const settle = db.prepare<[string, number, string, string, string, number]>(
    `INSERT INTO kernel_commands (command_id, stream_seq, kind, outcome, reason, settled_at) VALUES (?, ?, ?, ?, ?, ?)`,
  );
  const counts = db.prepare<[], { outcome: string; n: number }>(
    "SELECT outcome, COUNT(*) AS n FROM kernel_commands GROUP BY outcome",
  );
  const settledCounter = deps.meter.createCounter("nops_events_commands_settled", {
    description: "Hub commands settled by this edge, by outcome (applied | dead-lettered | duplicate)",
  });

  let messages: ConsumerMessages | undefined;
  let stopped = false;
  let streamLastSeq = 0;
  let linkLag = 0;
  let linkIdleMs: number | undefined;
  let oldestPendingAt: number | undefined;
  const tally = { applied: 0, deadLettered: 0 };
  for (const r of counts.all()) {
    if (r.outcome === "applied") tally.applied = r.n;
    else tally.deadLettered = r.n;
  }
  const lastSeq = (): number => progress.get(stream)?.lastSeq ?? 0;

  deps.meter
    .createObservableGauge("nops_events_commands_pending", {
      description: "Hub commands sourced by this edge and not yet applied",
    })
    .addCallback((r) => r.observe(Math.max(0, streamLastSeq - lastSeq())));
  deps.meter
    .createObservableGauge("nops_events_commands_link_lag", {
      description: "Hub commands for this edge not yet sourced (hub -> edge backlog)",
    })
    .addCallback((r) => r.observe(linkLag));

  const applyTx = db.transaction(
    (
      command: KernelCommand,
      seq: number,
      kind: string,
    ): { outcome: "applied" | "duplicate"; committed?: () => void } => {
      const now = clock.now();
      progress.set(stream, seq, now);
      if (seen.get(command.id)) return { outcome: "duplicate" };
      settle.run(command.id, seq, kind, "applied", "", now);
      return { outcome: "applied", committed: deps.handler.apply(command) ?? undefined };
    },
  );
  const rejectTx = db.transaction(
    (command: KernelCommand | undefined, seq: number, kind: string, reason: string): void => {
      const now = clock.now();
      progress.set(stream, seq, now);
      const id = command?.id ?? "";
      // A command id settled before keeps its first outcome.
      if (id !== "" && !seen.get(id)) settle.run(id, seq, kind, "dead-lettered", reason.slice(0, 1000), now);
      deps.handler.rejected(command, seq, reason);
    },
  );

  async function deadLetter(
    js: JetStreamClient,
    m: { seq: number; subject: string; data: Uint8Array },
    reason: string,
  ) {
    const h = natsHeaders();
    h.set(DLQ_HEADERS.subject, m.subject);
    h.set(DLQ_HEADERS.streamSeq, String(m.seq));
    h.set(DLQ_HEADERS.consumer, `${options.systemTenant}--${COMMANDS_CONSUMER}`);
    h.set(DLQ_HEADERS.reason, reason.slice(0, 1000));
    h.set(DLQ_HEADERS.deliveries, "1");
    // Stored before progress moves; the message id makes a retry after a crash store nothing twice.
    await js.publish(deadLetterSubject(options.systemTenant, `${options.systemTenant}--${COMMANDS_CONSUMER}`), m.data, {
      msgID: `dlq:${stream}:${COMMANDS_CONSUMER}:${m.seq}`,
      headers: h,
    });
  }

  async function handle(js: JetStreamClient, m: { seq: number; subject: string; data: Uint8Array }): Promise<void> {
    let command: KernelCommand | undefined;
    let reason: string | undefined;
    try {
      command = fromBinary(KernelCommandSchema, m.data);
      reason = checkCommandEnvelope(command, options.edgeId);
    } catch (err) {
      reason = `not a nops.events.v1.KernelCommand: ${err instanceof Error ? err.message : String(err)}`;
    }
    const kind = command?.command.case ?? "unknown";
    if (!reason && command) {
      try {
        const { outcome, committed } = applyTx(command, m.seq, kind);
        committed?.();
        settledCounter.add(1, { outcome });
        if (outcome === "applied") {
          tally.applied++;
          logger.info({ seq: m.seq, id: command.id, kind, actor: command.issuedBy }, "hub command applied");
        } else logger.info({ seq: m.seq, id: command.id }, "hub command already applied; skipped");
        return;
      } catch (err) {
        if (!(err instanceof CommandRejectedError)) throw err;
        reason = err.message;
      }
    }
    await deadLetter(js, m, reason ?? "rejected");
    rejectTx(command, m.seq, kind, reason ?? "rejected");
    tally.deadLettered++;
    settledCounter.add(1, { outcome: "dead-lettered" });
    logger.warn({ seq: m.seq, id: command?.id, kind, reason }, "hub command dead-lettered");
  }

  return {
    async ensureStream(jsm) {
      await ensureStream(jsm, edgeCommandStreamConfig(options.edgeId, options.hubDomain, options.streamMaxAgeMs));
    },
    async run(js) {
      stopped = false;
      let delay = options.retryInitialMs;
      while (!stopped) {
        try {
          const consumer = await js.consumers.get(stream, {
            deliver_policy: DeliverPolicy.StartSequence,
            opt_start_seq: lastSeq() + 1,
          });
          const msgs = await consumer.consume();
          messages = msgs;
          if (stopped) msgs.stop();
          for await (const m of msgs) {
            if (m.seq <= lastSeq()) continue;
            await handle(js, m);
            delay = options.retryInitialMs;
          }
          if (stopped) return;
        } catch (err) {
          if (stopped) return;
          logger.warn({ err, retryMs: delay }, "hub command consumer paused; resuming after the last applied command");
        } finally {
          messages?.stop();
          messages = undefined;
        }
        await clock.sleep(delay);
        delay = Math.min(delay * 2, options.retryMaxMs);
      }
    },
    stop() {
      stopped = true;
      messages?.stop();
    },
    async refresh(jsm) {
      const info = await jsm.streams.info(stream);
      streamLastSeq = info.state.last_seq;
      oldestPendingAt = await oldestAfter(jsm, stream, lastSeq(), streamLastSeq);
      const link = sourceLink(info);
      if (link) ({ lag: linkLag, idleMs: linkIdleMs } = link);
    },
    status() {
      const settled = progress.get(stream);
      const appliedSeq = settled?.lastSeq ?? 0;
      return {
        appliedSeq,
        streamLastSeq,
        pending: Math.max(0, streamLastSeq - appliedSeq),
        linkLag,
        linkIdleMs,
        oldestPendingAt: appliedSeq < streamLastSeq ? oldestPendingAt : undefined,
        applied: tally.applied,
        deadLettered: tally.deadLettered,
        lastSettledAt: settled?.updatedAt,
      };
    },
  };
}
