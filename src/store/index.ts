/** The store layer's public surface: the SQLite connection, migrations and the outbox. */
export { type Db, openDatabase } from "./database.js";
export { MIGRATIONS } from "./migrations/index.js";
export { migrateDown, migrateUp, migrationStatus } from "./migrator.js";
export {
  type EventSink,
  type KernelEvent,
  eventSubject,
  createOutbox,
  RESERVED_EVENT_NAMESPACES,
  KERNEL_EVENT_HEADERS,
  callerHeaders,
} from "./outbox.js";
export {
  type OutboxEntry,
  type OutboxStore,
  type AppendedEvent,
  type UnpublishedRow,
  type PublicationReceipt,
  type BlockedRow,
  createSqliteOutboxStore,
  createInMemoryOutboxStore,
} from "./outbox-store.js";
export {
  type Transactor,
  type InMemoryTransactor,
  createSqliteTransactor,
  createInMemoryTransactor,
} from "./transactor.js";
export {
  type EventSchema,
  type TenantEventSchemas,
  KERNEL_EVENT_SCHEMAS,
  eventTypeVersion,
  checkKernelEvent,
  checkCallerEvent,
  checkEnvelope,
  resolveTenantEventSchemas,
} from "./event-schemas.js";
export { checkSqliteWritable } from "./sqlite-readiness.js";
