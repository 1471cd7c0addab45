import { create } from "@bufbuild/protobuf";
import { connect } from "@nats-io/transport-node";
import type { NatsConnection } from "@nats-io/nats-core";
import {
  DiscardPolicy,
  RetentionPolicy,
  StorageType,
  jetstream,
  jetstreamManager,
  type JetStreamClient,
  type JetStreamManager,
  type StreamConfig,
} from "@nats-io/jetstream";
import type { Meter, Tracer } from "@opentelemetry/api";
import type { Db, EventSink, OutboxStore, Transactor } from "../store/index.js";
import {
  type Clock,
  type TimerHandle,
  createDependencyBreaker,
  resolveDependencyBreakerOptions,
  type DependencyBreaker,
  type DependencyBreakerOptions,
} from "../common/index.js";
import type { Logger } from "../telemetry/index.js";
import type { EventBusOptions } from "./event-bus-options.js";
import {
  createOutboxRelay,
  type OutboxRelay,
  type OutboxRelayDeps,
  type PrePublishHook,
  type PublishedRow,
} from "./outbox-relay.js";
import { createHubConfirmer } from "./hub-confirmer.js";
import { createDeadLetterMover } from "./dead-letter-mover.js";
import { createIdempotencyStore, type IdempotencyStore } from "./idempotency-store.js";
import { createInbox, type Inbox } from "./inbox.js";
import {
  createEventFederation,
  type EventFederationStatus,
  type FederationLink,
  type PeerEventLink,
} from "./event-federation.js";
import { createCommandInbox, type CommandHandler, type CommandInboxStatus } from "./kernel-commands.js";
import { ensureStream } from "./hub-streams.js";
import { edgeInboxPrefix } from "./nats-config.js";
import {
  DegradedModeActivatedSchema,
  DegradedModeRecoveredSchema,
} from "../../gen/nops/events/v1/degraded_events_pb.js";

/** Readiness of the event bus for /readyz: degraded still serves (writes queue in the outbox). */
export interface EventBusStatus {
  state: "ok" | "degraded";
  reason?: string;
}

/** Dependencies of the event bus. */
export interface EventBusDeps {
  /** Idempotency keys and the inbox (their own tables). */
  db: Db;
  /** The outbox the relay drains and the hub confirmer prunes. */
  outbox: OutboxStore;
  /** Commits a degraded-mode event on its own. */
  transactor: Transactor;
  clock: Clock;
  logger: Logger;
  meter: Meter;
  /** Where degraded/recovered events are appended (the SQLite outbox). */
  sink: EventSink;
  /** The Egress Guard's pre-publish hook; default allow. */
  prePublish?: PrePublishHook;
  /** When tracing is on: producer spans for relayed events. */
  tracer?: Tracer;
  /** Records the leaf stream's PubAcks (the Publish writer thread's recordPublished). @default the outbox's */
  recordPublished?: OutboxRelayDeps["recordPublished"];
  /** Observes rows acknowledged by the leaf stream (bench, tests). */
  onPublished?: (row: PublishedRow) => void;
  /**
   * Liveness of the leaf: a PING round trip every probeIntervalMs, within budgetMs. While it is open
   * (a leaf that holds the connection but never answers) the bus reports "nats" degraded and hands
   * out no connection, so nothing waits on it; Publish is unaffected (its ack is the outbox write).
   * @default a breaker with DEFAULT_NATS_BREAKER
   */
  breaker?: DependencyBreaker;
  /**
   * Applies hub -> edge commands (NOPS_CMD_IN, docs/events.md "Hub -> edge commands"). When
   * absent, or the bus is not hub-bound, the edge reads no commands.
   */
  commands?: CommandHandler;
}

/** Default leaf liveness check: a PING answered within 500 ms, every 500 ms; two misses in a row open it. */
export const DEFAULT_NATS_BREAKER: DependencyBreakerOptions = {
  budgetMs: 500,
  failuresToTrip: 2,
  halfOpenAfterMs: 500,
  probeIntervalMs: 500,
};

/** Validates `admin.dependencies.nats`; throws ConfigError naming the field. */
export function resolveNatsBreakerOptions(input: unknown, path = "admin.dependencies.nats"): DependencyBreakerOptions {
  return resolveDependencyBreakerOptions(input, path, DEFAULT_NATS_BREAKER);
}

/** The edge event bus: outbox relay, hub confirmation, DLQ mover, sweeper and degraded-mode tracking. */
export interface EventBus {
  readonly options: EventBusOptions;
  readonly relay: OutboxRelay;
  readonly idempotency: IdempotencyStore;
  readonly inbox: Inbox;
  /** Starts everything; returns without waiting for NATS (the outbox queues meanwhile). */
  start(): void;
  stop(): Promise<void>;
  status(): EventBusStatus;
  /** What is degraded right now, by dependency ("nats", "nats-stream", "hub"). */
  degradations(): readonly Degradation[];
  /** The leaf connection while connected. */
  connection(): NatsConnection | undefined;
  jetstream(): JetStreamClient | undefined;
  jetstreamManager(): JetStreamManager | undefined;
  /** Counts a redelivered message (Subscribe). */
  recordRedelivery(): void;
  /** Runs the hub confirmation once now (tests, shutdown). */
  confirmNow(): Promise<number>;
  /** Deletes expired idempotency keys and old inbox rows now. */
  sweep(): void;
  /** Where kernel -> kernel events stand; undefined while no federation link is in effect. */
  federation(): EventFederationStatus | undefined;
  /**
   * Replaces the established federation peers' event links (static events.federation links win
   * over them); applied live. Ignored when the bus is not hub-bound.
   */
  setPeerLinks(links: readonly PeerEventLink[]): void;
  /** The federation links in effect now. */
  federationLinks(): readonly FederationLink[];
  /** Lag, last sync and refusals of each link (GetStatus). */
  links(): BusLink[];
  /** Where hub -> edge commands stand; undefined when this edge reads none. */
  commands(): CommandInboxStatus | undefined;
}

/** One direction of the bus between this edge and the hub (GetStatus bus_links, docs/events.md). */
export interface BusLink {
  name: "events-out" | "commands" | "federation-out" | "federation-in";
  lagMessages: number;
  lagSeconds: number;
  lastSyncAt?: number;
  rejected: number;
  /** Of lagMessages, those still at the hub, not yet carried to this edge (hub -> edge links; 0 otherwise). */
  hubBacklog: number;
}

/** One thing the event bus is working around (NATS leaf, stream full, hub link). */
export interface Degradation {
  dependency: string;
  mode: string;
  reason: string;
}

const CAPABILITY = "event-bus";

/** Creates the event bus component; the lead wires start()/stop() and status() into /readyz. */
export function createEventBus(deps: EventBusDeps, options: EventBusOptions): EventBus {
  const { db, clock, meter } = deps;
  const logger = deps.logger;
  let nc: NatsConnection | undefined;
  let js: JetStreamClient | undefined;
  let jsm: JetStreamManager | undefined;
  let ready = false;
  // Until the first connection attempt settles, "not connected" is not yet a degradation.
  let firstAttemptDone = false;
  let running = false;
  let hubReachable: boolean | undefined;
  let hubReason = "";
  let dlqSize = 0;
  const timers: TimerHandle[] = [];
  const tasks: Promise<unknown>[] = [];
  // One mover run at a time; a reconnect chains the next run after the stopped one.
  let moverTask: Promise<void> = Promise.resolve();
  const active = new Map<string, Degradation>();
  const breaker = deps.breaker ?? createDependencyBreaker({ logger, meter }, "nats", DEFAULT_NATS_BREAKER);
  // Connected and answering: what every user of the connection (relay, Subscribe, Ack) waits for.
  const live = (): boolean => ready && !breaker.isOpen();

  let lastPublishedAt: number | undefined;
  // Rows the Egress Guard holds back (kept until released, docs/events.md).
  const countBlocked = db.prepare<[], { n: number }>("SELECT COUNT(*) AS n FROM outbox_blocked");
  const relay = createOutboxRelay(
    {
      outbox: deps.outbox,
      clock,
      logger: logger.child({ part: "relay" }),
      meter,
      jetstream: () => (live() ? js : undefined),
      prePublish: deps.prePublish,
      onPublished: (row) => {
        lastPublishedAt = clock.now();
        deps.onPublished?.(row);
      },
      tracer: deps.tracer,
      recordPublished: deps.recordPublished,
    },
    options,
  );
  const confirmer = createHubConfirmer({ outbox: deps.outbox, clock }, options);
  const mover = createDeadLetterMover(
    { logger: logger.child({ part: "dlq" }) },
    { ...options, maxAgeMs: options.streamMaxAgeMs },
  );
  const commandInbox =
    deps.commands && options.hubBound !== false
      ? createCommandInbox(
          { db, clock, logger: logger.child({ part: "commands" }), meter, handler: deps.commands },
          options,
        )
      : undefined;
  let commandTask: Promise<void> = Promise.resolve();
  // Exists on every hub-bound edge: a peer's link may appear at any time (it waits for one to run).
  const federation =
    options.hubBound !== false
      ? createEventFederation(
          { db, clock, logger: logger.child({ part: "federation" }), meter, prePublish: deps.prePublish },
          options,
        )
      : undefined;
  let federationTask: Promise<void> = Promise.resolve();
  const idempotency = createIdempotencyStore({ db, clock }, { ttlMs: options.idempotencyTtlMs });
  const inbox = createInbox({ db, clock }, { retentionMs: options.inboxRetentionMs });
  const redeliveries = meter.createCounter("nops_events_redeliveries", {
    description: "Messages delivered again to a Subscribe consumer",
  });
  meter
    .createObservableGauge("nops_events_dlq_size", { description: "Messages in the dead-letter stream" })
    .addCallback((r) => r.observe(dlqSize));

  const edgeStreamConfig = (): Partial<StreamConfig> => ({
    subjects: ["nops.events.>"],
    retention: RetentionPolicy.Limits,
    // Discard new: a full stream refuses the publish and the relay pauses; nothing is dropped.
    discard: DiscardPolicy.New,
    storage: StorageType.File,
    max_bytes: options.streamMaxBytes,
    max_age: options.streamMaxAgeMs * 1_000_000,
    duplicate_window: options.duplicateWindowMs * 1_000_000,
  });

  async function onConnected(conn: NatsConnection): Promise<void> {
    const m = await jetstreamManager(conn);
    await ensureStream(m, { name: options.streamName, ...edgeStreamConfig() });
    const info = await m.streams.info(options.streamName);
    relay.reconcileStreamTail(info.state.last_seq);
    await mover.ensureStreams(m);
    await commandInbox?.ensureStream(m);
    const client = jetstream(conn);
    js = client;
    jsm = m;
    ready = true;
    relay.kick();
    moverTask = moverTask.then(async () => {
      if (!running || !ready) return;
      await mover.run(client, m).catch((err: unknown) => {
        if (running) logger.warn({ err }, "dead-letter mover stopped");
      });
    });
    if (commandInbox) {
      commandTask = commandTask.then(async () => {
        if (!running || !ready) return;
        await commandInbox.run(client);
      });
    }
    if (federation) {
      federationTask = federationTask.then(async () => {
        if (!running || !ready) return;
        await federation.run(client, m);
      });
    }
  }

  async function connectLoop(): Promise<void> {
    let delay = options.retryInitialMs;
    while (running) {
      let conn: NatsConnection;
      try {
        conn = await connect({
          servers: options.natsUrl,
          user: options.natsUser,
          pass: options.natsPassword,
          name: `nops-kernel-${options.edgeId}`,
          // Replies from the hub come back on this edge's own inbox prefix, the only one its
          // leaf link may receive (docs/events.md, "Per-edge identity").
          inboxPrefix: edgeInboxPrefix(options.edgeId),
          maxReconnectAttempts: -1,
          reconnectTimeWait: 250,
          pingInterval: 5000,
          timeout: 2000,
        });
      } catch (err) {
        firstAttemptDone = true;
        logger.debug({ err }, "NATS leaf not reachable");
        await clock.sleep(delay);
        delay = Math.min(delay * 2, options.retryMaxMs);
        continue;
      }
      firstAttemptDone = true;
      if (!running) {
        await conn.close();
        break;
      }
      delay = options.retryInitialMs;
      nc = conn;
      let setup = onConnected(conn);
      const settle = (p: Promise<void>): Promise<void> =>
        p.catch((err: unknown) => {
          logger.warn({ err }, "event bus setup on the leaf failed; retrying");
          return clock.sleep(options.retryMaxMs).then(() => {
            if (running && !conn.isClosed() && !ready) setup = settle(onConnected(conn));
          });
        });
      setup = settle(setup);
      for await (const s of conn.status()) {
        if (s.type === "disconnect") {
          ready = false;
          mover.stop();
          commandInbox?.stop();
          federation?.stop();
        } else if (s.type === "reconnect") {
          setup = settle(onConnected(conn));
        }
      }
      await setup;
      ready = false;
      nc = undefined;
    }
  }

  function appendDegradedEvent(d: Degradation, recovered: boolean): void {
    const init = { capability: CAPABILITY, dependency: d.dependency, mode: d.mode, reason: d.reason };
    deps.transactor.transaction(() => {
      if (recovered) {
        deps.sink.append({
          type: "degraded.mode.recovered.v1",
          tenant: options.systemTenant,
          schema: DegradedModeRecoveredSchema,
          payload: create(DegradedModeRecoveredSchema, init),
        });
      } else {
        deps.sink.append({
          type: "degraded.mode.activated.v1",
          tenant: options.systemTenant,
          schema: DegradedModeActivatedSchema,
          payload: create(DegradedModeActivatedSchema, init),
        });
      }
    });
    relay.kick();
  }

  function evaluate(): void {
    if (!firstAttemptDone) return;
    const now = new Map<string, Degradation>();
    const problem = relay.problem();
    if (ready && breaker.isOpen()) {
      now.set("nats", {
        dependency: "nats",
        mode: "queue-locally",
        reason: `NATS leaf ${breaker.status().detail ?? ""}`,
      });
    } else if (!ready || problem?.kind === "unreachable") {
      now.set("nats", {
        dependency: "nats",
        mode: "queue-locally",
        reason: problem?.reason ?? "NATS leaf node not connected",
      });
    } else if (problem?.kind === "stream-full") {
      now.set("nats-stream", { dependency: "nats-stream", mode: "paused", reason: problem.reason });
    }
    if (hubReachable === false) now.set("hub", { dependency: "hub", mode: "store-and-forward", reason: hubReason });
    for (const [key, d] of now) {
      if (!active.has(key)) {
        logger.warn(d, "event bus degraded");
        appendDegradedEvent(d, false);
      }
    }
    for (const [key, d] of active) {
      if (!now.has(key)) {
        logger.info(d, "event bus recovered");
        appendDegradedEvent(d, true);
      }
    }
    active.clear();
    for (const [k, v] of now) active.set(k, v);
  }

  async function confirmNow(): Promise<number> {
    const conn = nc;
    if (!conn || !ready) throw new Error("NATS leaf node not connected");
    try {
      const hub = await jetstreamManager(conn, { domain: options.hubDomain, timeout: options.hubRequestTimeoutMs });
      const seq = await confirmer.confirm(hub);
      hubReachable = true;
      return seq;
    } catch (err) {
      hubReachable = false;
      hubReason = `hub JetStream unreachable: ${err instanceof Error ? err.message : String(err)}`;
      throw err;
    }
  }

  function probeLeaf(): void {
    const conn = nc;
    if (!conn || !ready) return;
    const wasOpen = breaker.isOpen();
    breaker
      .probe(() => conn.rtt())
      .then(() => {
        if (wasOpen) relay.kick();
      })
      .catch(() => undefined);
  }

  // Federation status shows only while a link is in effect.
  const federationStatus = () => (federation?.enabled ? federation.status() : undefined);

  async function confirmLoop(): Promise<void> {
    while (running) {
      if (live()) {
        if (options.hubBound !== false)
          await confirmNow().catch((err: unknown) => logger.debug({ err }, "hub confirmation failed"));
        if (jsm && commandInbox)
          await commandInbox.refresh(jsm).catch((err: unknown) => logger.debug({ err }, "command stream info failed"));
        // refresh() itself does nothing while no link is in effect.
        if (jsm && federation)
          await federation.refresh(jsm).catch((err: unknown) => logger.debug({ err }, "federation stream info failed"));
        await jsm?.streams
          .info(options.dlqStreamName)
          .then((i) => {
            dlqSize = i.state.messages;
          })
          .catch(() => undefined);
      }
      await clock.sleep(options.confirmIntervalMs);
    }
  }

  const bus: EventBus = {
    options,
    relay,
    idempotency,
    inbox,
    start() {
      if (running) return;
      running = true;
      relay.start();
      tasks.push(connectLoop(), confirmLoop());
      timers.push(clock.setInterval(evaluate, 250));
      timers.push(clock.setInterval(probeLeaf, breaker.options.probeIntervalMs));
      timers.push(clock.setInterval(() => bus.sweep(), options.sweepIntervalMs));
    },
    async stop() {
      if (!running) return;
      running = false;
      for (const t of timers) clock.clearInterval(t);
      timers.length = 0;
      mover.stop();
      commandInbox?.stop();
      federation?.stop();
      await relay.stop();
      ready = false;
      await nc?.drain().catch(() => undefined);
      await nc?.close().catch(() => undefined);
      await Promise.allSettled([...tasks, moverTask, commandTask, federationTask]);
      tasks.length = 0;
    },
    degradations: () => [...active.values()],
    status() {
      if (active.size === 0) return { state: "ok" };
      return { state: "degraded", reason: [...active.values()].map((d) => `${d.dependency}: ${d.reason}`).join("; ") };
    },
    connection: () => (live() ? nc : undefined),
    jetstream: () => (live() ? js : undefined),
    jetstreamManager: () => (live() ? jsm : undefined),
    recordRedelivery: () => redeliveries.add(1),
    confirmNow,
    commands: () => commandInbox?.status(),
    links() {
      const now = clock.now();
      const age = (at: number | undefined) => (at === undefined ? 0 : Math.max(0, now - at) / 1000);
      const oldest = deps.outbox.oldestUnpublishedAt();
      const out: BusLink[] = [
        {
          name: "events-out",
          lagMessages: relay.depth(),
          lagSeconds: age(oldest),
          lastSyncAt: lastPublishedAt,
          rejected: countBlocked.get()?.n ?? 0,
          hubBacklog: 0,
        },
      ];
      const c = commandInbox?.status();
      if (c)
        out.push({
          name: "commands",
          lagMessages: c.linkLag + c.pending,
          lagSeconds: age(c.oldestPendingAt),
          lastSyncAt: c.lastSettledAt,
          rejected: c.deadLettered,
          hubBacklog: c.linkLag,
        });
      const f = federationStatus();
      if (f)
        out.push(
          {
            name: "federation-out",
            lagMessages: f.outPending,
            lagSeconds: age(f.outOldestAt),
            lastSyncAt: f.outLastAt,
            rejected: f.blocked,
            hubBacklog: 0,
          },
          {
            name: "federation-in",
            lagMessages: f.inLinkLag + f.inPending,
            lagSeconds: age(f.inOldestAt),
            lastSyncAt: f.inLastAt,
            rejected: f.rejected,
            hubBacklog: f.inLinkLag,
          },
        );
      return out;
    },
    federation: federationStatus,
    setPeerLinks: (links) => federation?.setPeerLinks(links),
    federationLinks: () => federation?.links() ?? [],
    sweep() {
      const keys = idempotency.sweep();
      const rows = inbox.sweep();
      if (keys + rows > 0) logger.debug({ keys, rows }, "swept idempotency keys and inbox rows");
    },
  };
  return bus;
}
