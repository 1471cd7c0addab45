import { resolveFederationLinks, type FederationLink } from "./event-federation.js";
import { ConfigError, EDGE_ID_PATTERN, TENANT_PATTERN } from "../common/index.js";
import { RESERVED_EVENT_NAMESPACES, resolveTenantEventSchemas, type TenantEventSchemas } from "../store/index.js";

/** Options of the edge event bus (relay, hub confirmation, idempotency, consumers, DLQ). */
export interface EventBusOptions {
  /** This edge's id; part of every Nats-Msg-Id ("<edgeId>:<outboxId>"). Required. */
  edgeId: string;
  /** Client URL of the local leaf node. @default "nats://127.0.0.1:4222" */
  natsUrl: string;
  /** User in the leaf's KERNEL account. @default undefined (no auth) */
  natsUser?: string;
  /** Password of natsUser. @default undefined */
  natsPassword?: string;
  /**
   * False when no hub sources the edge stream (a standalone edge): hub confirmation is not
   * attempted, so the hub is never reported unreachable. Derived from nats.url / nats.hubUrl by
   * the kernel, not read from the file. @default true
   */
  hubBound?: boolean;
  /** Name of the edge stream on the leaf (subjects nops.events.>). @default "NOPS_EVENTS" */
  streamName: string;
  /** Edge stream max bytes; with discard new a full stream pauses the relay. @default 1073741824 (1 GiB) */
  streamMaxBytes: number;
  /** Edge stream max age; old messages age out so the stream does not stay full. @default 604800000 (7 days) */
  streamMaxAgeMs: number;
  /**
   * JetStream duplicate window of the edge stream: bounds how long after a crash a re-publish is still
   * deduplicated. @default 7200000 (2 h)
   */
  duplicateWindowMs: number;
  /** JetStream domain of the hub. @default "hub" */
  hubDomain: string;
  /** Name of the hub stream that sources this edge's stream. @default "NOPS_EDGE_<EDGEID>" */
  hubStreamName: string;
  /** Create the hub stream (sourcing $JS.<edgeDomain>.API) when it does not exist. @default true */
  ensureHubStream: boolean;
  /** Replicas of the hub stream the kernel creates (3 on a clustered hub, see docs/events.md). @default 1 */
  hubStreamReplicas: number;
  /** JetStream domain of this edge's leaf node. @default edgeId */
  edgeDomain: string;
  /** Publishes awaiting a PubAck at once (backpressure). @default 256 */
  maxInFlight: number;
  /** Outbox rows read per relay pass. @default 512 */
  batchSize: number;
  /** How often the relay looks for rows written without a kick (other writers). @default 100 */
  pollIntervalMs: number;
  /** First retry delay after a failed publish; doubles up to retryMaxMs. @default 250 */
  retryInitialMs: number;
  /** Largest retry delay. @default 5000 */
  retryMaxMs: number;
  /** PubAck timeout. @default 5000 */
  publishTimeoutMs: number;
  /** How often hub confirmation is checked. @default 2000 */
  confirmIntervalMs: number;
  /** Timeout of requests to the hub's JetStream API (through the leaf). @default 3000 */
  hubRequestTimeoutMs: number;
  /** Confirmed rows are deleted this long after confirmation. @default 600000 (10 min) */
  pruneAfterMs: number;
  /** Idempotency key lifetime. @default 86400000 (24 h) */
  idempotencyTtlMs: number;
  /** Inbox rows are kept this long (must exceed any redelivery horizon). @default 604800000 (7 days) */
  inboxRetentionMs: number;
  /** Sweeper period for expired idempotency keys and old inbox rows. @default 60000 */
  sweepIntervalMs: number;
  /** Stream that captures max-deliveries / terminated advisories. @default "NOPS_ADVISORIES" */
  advisoryStreamName: string;
  /** Dead-letter stream (subjects nops.dlq.>). @default "NOPS_DLQ" */
  dlqStreamName: string;
  /** Default max deliveries of Subscribe consumers. @default 5 */
  defaultMaxDeliveries: number;
  /** Default ack wait of Subscribe consumers. @default 30000 */
  defaultAckWaitMs: number;
  /** Tenant that kernel-internal events (degraded mode) are recorded under. @default "system" */
  systemTenant: string;
  /**
   * Kernel -> kernel events (docs/events.md): the peer edges this edge exchanges tenants' events
   * with through the hub, and which tenants may cross each way. @default [] (none)
   */
  federation: FederationLink[];
  /**
   * The event types tenants may publish, each with the full name of its payload's schema
   * (docs/events.md, "Event schemas"): Publish refuses any other type, and the relay refuses any
   * that reaches the outbox anyway. @default {} (no registry: any type outside the kernel's namespaces)
   */
  schemas: TenantEventSchemas;
}

/** @see EventBusOptions.natsUrl */
export const DEFAULT_NATS_URL = "nats://127.0.0.1:4222";
/** @see EventBusOptions.streamName */
export const DEFAULT_EDGE_STREAM = "NOPS_EVENTS";
/** @see EventBusOptions.streamMaxBytes */
export const DEFAULT_STREAM_MAX_BYTES = 1024 * 1024 * 1024;
/** @see EventBusOptions.streamMaxAgeMs */
export const DEFAULT_STREAM_MAX_AGE_MS = 7 * 24 * 3600_000;
/** @see EventBusOptions.duplicateWindowMs */
export const DEFAULT_DUPLICATE_WINDOW_MS = 2 * 3600_000;
/** @see EventBusOptions.hubDomain */
export const DEFAULT_HUB_DOMAIN = "hub";
/** @see EventBusOptions.maxInFlight */
export const DEFAULT_MAX_IN_FLIGHT = 256;
/** @see EventBusOptions.batchSize */
export const DEFAULT_BATCH_SIZE = 512;
/** @see EventBusOptions.pollIntervalMs */
export const DEFAULT_POLL_INTERVAL_MS = 100;
/** @see EventBusOptions.retryInitialMs */
export const DEFAULT_RETRY_INITIAL_MS = 250;
/** @see EventBusOptions.retryMaxMs */
export const DEFAULT_RETRY_MAX_MS = 5000;
/** @see EventBusOptions.publishTimeoutMs */
export const DEFAULT_PUBLISH_TIMEOUT_MS = 5000;
/** @see EventBusOptions.confirmIntervalMs */
export const DEFAULT_CONFIRM_INTERVAL_MS = 2000;
/** @see EventBusOptions.hubRequestTimeoutMs */
export const DEFAULT_HUB_REQUEST_TIMEOUT_MS = 3000;
/** @see EventBusOptions.pruneAfterMs */
export const DEFAULT_PRUNE_AFTER_MS = 600_000;
/** @see EventBusOptions.idempotencyTtlMs */
export const DEFAULT_IDEMPOTENCY_TTL_MS = 24 * 3600_000;
/** @see EventBusOptions.inboxRetentionMs */
export const DEFAULT_INBOX_RETENTION_MS = 7 * 24 * 3600_000;
/** @see EventBusOptions.sweepIntervalMs */
export const DEFAULT_SWEEP_INTERVAL_MS = 60_000;
/** @see EventBusOptions.advisoryStreamName */
export const DEFAULT_ADVISORY_STREAM = "NOPS_ADVISORIES";
/** @see EventBusOptions.dlqStreamName */
export const DEFAULT_DLQ_STREAM = "NOPS_DLQ";
/** @see EventBusOptions.defaultMaxDeliveries */
export const DEFAULT_MAX_DELIVERIES = 5;
/** @see EventBusOptions.defaultAckWaitMs */
export const DEFAULT_ACK_WAIT_MS = 30_000;
/** @see EventBusOptions.systemTenant */
export const DEFAULT_SYSTEM_TENANT = "system";

// Edge ids, JetStream domains and stream names follow the one rule for NATS names.
const NAME = EDGE_ID_PATTERN;

/** Validates a partial plain object and fills defaults; throws ConfigError naming `<path>.<field>`. */
export function resolveEventBusOptions(input: Partial<EventBusOptions>, path = "events"): EventBusOptions {
  const str = (field: keyof EventBusOptions, value: unknown, fallback: string | undefined, re?: RegExp): string => {
    const v = value ?? fallback;
    if (typeof v !== "string" || v === "" || (re && !re.test(v)))
      throw new ConfigError(`${path}.${field} must be a non-empty string${re ? ` matching ${re}` : ""}`);
    return v;
  };
  const int = (field: keyof EventBusOptions, value: unknown, fallback: number, min: number): number => {
    const v = value ?? fallback;
    if (typeof v !== "number" || !Number.isInteger(v) || v < min)
      throw new ConfigError(`${path}.${field} must be an integer >= ${min}`);
    return v;
  };
  const edgeId = str("edgeId", input.edgeId, undefined, NAME);
  const optional = (field: "natsUser" | "natsPassword"): string | undefined => {
    const v = input[field];
    if (v === undefined) return undefined;
    if (typeof v !== "string" || v === "") throw new ConfigError(`${path}.${field} must be a non-empty string`);
    return v;
  };
  if (input.ensureHubStream !== undefined && typeof input.ensureHubStream !== "boolean")
    throw new ConfigError(`${path}.ensureHubStream must be a boolean`);
  const opts: EventBusOptions = {
    edgeId,
    federation: resolveFederationLinks(input.federation, edgeId, `${path}.federation`),
    natsUrl: str("natsUrl", input.natsUrl, DEFAULT_NATS_URL),
    natsUser: optional("natsUser"),
    natsPassword: optional("natsPassword"),
    streamName: str("streamName", input.streamName, DEFAULT_EDGE_STREAM, NAME),
    streamMaxBytes: int("streamMaxBytes", input.streamMaxBytes, DEFAULT_STREAM_MAX_BYTES, 1024),
    streamMaxAgeMs: int("streamMaxAgeMs", input.streamMaxAgeMs, DEFAULT_STREAM_MAX_AGE_MS, 1000),
    duplicateWindowMs: int("duplicateWindowMs", input.duplicateWindowMs, DEFAULT_DUPLICATE_WINDOW_MS, 1000),
    hubDomain: str("hubDomain", input.hubDomain, DEFAULT_HUB_DOMAIN, NAME),
    hubStreamName: str(
      "hubStreamName",
      input.hubStreamName,
      `NOPS_EDGE_${edgeId.toUpperCase().replace(/-/g, "_")}`,
      NAME,
    ),
    ensureHubStream: input.ensureHubStream ?? true,
    hubStreamReplicas: int("hubStreamReplicas", input.hubStreamReplicas, 1, 1),
    edgeDomain: str("edgeDomain", input.edgeDomain, edgeId, NAME),
    maxInFlight: int("maxInFlight", input.maxInFlight, DEFAULT_MAX_IN_FLIGHT, 1),
    batchSize: int("batchSize", input.batchSize, DEFAULT_BATCH_SIZE, 1),
    pollIntervalMs: int("pollIntervalMs", input.pollIntervalMs, DEFAULT_POLL_INTERVAL_MS, 1),
    retryInitialMs: int("retryInitialMs", input.retryInitialMs, DEFAULT_RETRY_INITIAL_MS, 1),
    retryMaxMs: int("retryMaxMs", input.retryMaxMs, DEFAULT_RETRY_MAX_MS, 1),
    publishTimeoutMs: int("publishTimeoutMs", input.publishTimeoutMs, DEFAULT_PUBLISH_TIMEOUT_MS, 1),
    confirmIntervalMs: int("confirmIntervalMs", input.confirmIntervalMs, DEFAULT_CONFIRM_INTERVAL_MS, 1),
    hubRequestTimeoutMs: int("hubRequestTimeoutMs", input.hubRequestTimeoutMs, DEFAULT_HUB_REQUEST_TIMEOUT_MS, 1),
    pruneAfterMs: int("pruneAfterMs", input.pruneAfterMs, DEFAULT_PRUNE_AFTER_MS, 0),
    idempotencyTtlMs: int("idempotencyTtlMs", input.idempotencyTtlMs, DEFAULT_IDEMPOTENCY_TTL_MS, 1),
    inboxRetentionMs: int("inboxRetentionMs", input.inboxRetentionMs, DEFAULT_INBOX_RETENTION_MS, 1),
    sweepIntervalMs: int("sweepIntervalMs", input.sweepIntervalMs, DEFAULT_SWEEP_INTERVAL_MS, 1),
    advisoryStreamName: str("advisoryStreamName", input.advisoryStreamName, DEFAULT_ADVISORY_STREAM, NAME),
    dlqStreamName: str("dlqStreamName", input.dlqStreamName, DEFAULT_DLQ_STREAM, NAME),
    defaultMaxDeliveries: int("defaultMaxDeliveries", input.defaultMaxDeliveries, DEFAULT_MAX_DELIVERIES, 1),
    defaultAckWaitMs: int("defaultAckWaitMs", input.defaultAckWaitMs, DEFAULT_ACK_WAIT_MS, 1),
    systemTenant: str("systemTenant", input.systemTenant, DEFAULT_SYSTEM_TENANT, TENANT_PATTERN),
    schemas: resolveTenantEventSchemas(input.schemas, RESERVED_EVENT_NAMESPACES, `${path}.schemas`),
  };
  if (opts.retryMaxMs < opts.retryInitialMs) throw new ConfigError(`${path}.retryMaxMs must be >= retryInitialMs`);
  return opts;
}
