import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { create } from "@bufbuild/protobuf";
import { createHandlerContext, type HandlerContext } from "@connectrpc/connect";
import { createNoopMeter, type Meter } from "@opentelemetry/api";
import { openDatabase, type Db } from "../../src/store/database.js";
import { migrateUp } from "../../src/store/migrator.js";
import { MIGRATIONS } from "../../src/store/migrations/index.js";
import { createOutbox } from "../../src/store/outbox.js";
import { createSqliteOutboxStore } from "../../src/store/outbox-store.js";
import { createSqliteTransactor } from "../../src/store/transactor.js";
import { systemClock, type Clock } from "../../src/common/clock.js";
import { createSilentLogger } from "../../src/telemetry/logger.js";
import { createEventBus, type EventBus, type EventBusDeps } from "../../src/events/event-bus.js";
import { resolveEventBusOptions, type EventBusOptions } from "../../src/events/event-bus-options.js";
import { createEventBusService, resolveEventBusServiceOptions } from "../../src/events/event-bus-service.js";
import { createThreadPublishWriter } from "../../src/events/publish-writer.js";
import type { CommandHandler } from "../../src/events/kernel-commands.js";
import { EventBusService, PublishRequestSchema, type PublishResponse } from "../../gen/nops/kernel/v1/event_bus_pb.js";

/** Opens (or reopens) a kernel database with every migration applied. */
export function openEventsDb(path: string): Db {
  const db = openDatabase({ path });
  migrateUp(db, MIGRATIONS);
  return db;
}

/** A fresh temp dir for a test's database. */
export function tempDbPath(): string {
  return join(mkdtempSync(join(tmpdir(), "nops-events-")), "kernel.db");
}

/** The real edge pipeline: SQLite outbox + event bus + EventBusService handler, in-process. */
export interface EdgePipeline {
  db: Db;
  bus: EventBus;
  service: ReturnType<typeof createEventBusService>;
  /** Calls Publish as the transport would. */
  publish(init: {
    tenant: string;
    subject: string;
    payload?: Uint8Array;
    idempotencyKey?: string;
    headers?: Record<string, string>;
  }): Promise<PublishResponse>;
  /** A handler context whose signal the test controls. */
  context(signal?: AbortSignal): HandlerContext;
  close(): Promise<void>;
}

/** Starts the pipeline against a leaf at `natsUrl`. */
export function startEdgePipeline(
  init: {
    dbPath: string;
    natsUrl: string;
    user: string;
    pass: string;
    edgeId: string;
    edgeDomain: string;
    clock?: Clock;
    meter?: Meter;
    /** Commit Publish calls on the writer thread (events.service.writerThread); the kernel's default when unset. */
    writerThread?: boolean;
    /** Hub -> edge commands: builds the handler over the pipeline's database. */
    commands?: (db: Db) => CommandHandler;
  } & Partial<EventBusOptions> &
    Pick<Partial<EventBusDeps>, "prePublish" | "onPublished" | "tracer">,
): EdgePipeline {
  const {
    dbPath,
    natsUrl,
    user,
    pass,
    clock = systemClock,
    meter = createNoopMeter(),
    prePublish,
    onPublished,
    tracer,
    writerThread,
    commands,
    ...rest
  } = init;
  const db = openEventsDb(dbPath);
  const options = resolveEventBusOptions({
    confirmIntervalMs: 300,
    hubRequestTimeoutMs: 1000,
    retryMaxMs: 500,
    pollIntervalMs: 50,
    ...rest,
    natsUrl,
    natsUser: user,
    natsPassword: pass,
  });
  const logger = createSilentLogger();
  const outbox = createSqliteOutboxStore(db);
  const transactor = createSqliteTransactor(db);
  const sink = createOutbox(outbox, { source: options.edgeId, clock });
  const serviceOptions = resolveEventBusServiceOptions({});
  // As the kernel does for a database file.
  const writer = !(writerThread ?? serviceOptions.writerThread)
    ? undefined
    : createThreadPublishWriter(
        { clock, logger },
        { databasePath: dbPath, idempotencyTtlMs: options.idempotencyTtlMs, idleMs: serviceOptions.writerIdleMs },
      );
  const bus = createEventBus(
    {
      db,
      outbox,
      transactor,
      clock,
      logger,
      meter,
      sink,
      prePublish,
      onPublished,
      tracer,
      recordPublished: writer?.recordPublished,
      commands: commands?.(db),
    },
    options,
  );
  const service = createEventBusService(
    { outbox, transactor, clock, logger, bus, prePublish, tracer, writer },
    serviceOptions,
  );
  bus.start();
  const context = (signal?: AbortSignal): HandlerContext =>
    createHandlerContext({
      service: EventBusService,
      method: EventBusService.method.publish,
      protocolName: "grpc",
      requestMethod: "POST",
      url: "http://localhost/nops.kernel.v1.EventBusService",
      requestSignal: signal,
    });
  return {
    db,
    bus,
    service,
    context,
    async publish(p) {
      const req = create(PublishRequestSchema, {
        tenant: p.tenant,
        subject: p.subject,
        payload: p.payload ?? new Uint8Array(),
        idempotencyKey: p.idempotencyKey ?? "",
        headers: p.headers ?? {},
      });
      return (await service.publish(req, context())) as PublishResponse;
    },
    async close() {
      await bus.stop();
      await writer?.close();
      db.close();
    },
  };
}
