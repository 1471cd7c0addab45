import type { Db } from "../store/index.js";

/** An agent row as stored. */
export interface AgentRow {
  id: string;
  tenant: string;
  name: string;
  version: string;
  endpoint: string;
  capabilities: {
    name: string;
    version: string;
    attributes: Record<string, string>;
    /** JSON Schema text of the input; absent or empty: none declared. */
    inputSchema?: string;
    /** JSON Schema text of the output; absent or empty: none declared. */
    outputSchema?: string;
  }[];
  labels: Record<string, string>;
  registeredAt: number;
  heartbeatAt: number;
  revision: number;
  /** The SPIFFE ID the endpoint must present (agent_identities); "" when none was recorded. */
  spiffeId: string;
}

/** Load as stored. */
export interface LoadRow {
  inFlight: number;
  cpu: number;
  latencyP50Ms: number;
  latencyP99Ms: number;
  errorRate: number;
  reportedAt: number;
}

/** An idempotency key of RegisterAgent, as stored. */
export interface IdempotencyRow {
  tenant: string;
  key: string;
  agentId: string;
  contentHash: string;
  createdAt: number;
}

/** SQLite persistence of agents; callers group calls in `db.transaction` with their events. */
export interface AgentStore {
  loadAll(): { agent: AgentRow; load?: LoadRow }[];
  insert(agent: AgentRow): void;
  update(agent: AgentRow): void;
  delete(id: string): boolean;
  /** Records a heartbeat (and its load) without touching the rest of the row. */
  touch(id: string, heartbeatAt: number, load: LoadRow | undefined): void;
  /** Every idempotency key of a live agent (deleting an agent deletes its keys: ON DELETE CASCADE). */
  loadIdempotency(): IdempotencyRow[];
  insertIdempotency(row: IdempotencyRow): void;
}

interface DbAgent {
  id: string;
  tenant: string;
  name: string;
  version: string;
  endpoint: string;
  capabilities: string;
  labels: string;
  registered_at: number;
  heartbeat_at: number;
  revision: number;
  in_flight: number | null;
  cpu: number;
  latency_p50_ms: number;
  latency_p99_ms: number;
  error_rate: number;
  reported_at: number | null;
  spiffe_id: string | null;
}

/** Creates the agent store over the `agents` and `agent_load` tables, with prepared statements. */
export function createAgentStore(db: Db): AgentStore {
  const all = db.prepare<[], DbAgent>(
    `SELECT a.*, l.in_flight, l.cpu, l.latency_p50_ms, l.latency_p99_ms, l.error_rate, l.reported_at, i.spiffe_id
     FROM agents a LEFT JOIN agent_load l ON l.agent_id = a.id LEFT JOIN agent_identities i ON i.agent_id = a.id`,
  );
  const insert = db.prepare(
    `INSERT INTO agents (id, tenant, name, version, endpoint, capabilities, labels, registered_at, heartbeat_at, revision)
     VALUES (@id, @tenant, @name, @version, @endpoint, @capabilities, @labels, @registeredAt, @heartbeatAt, @revision)`,
  );
  const update = db.prepare(
    `UPDATE agents SET name = @name, version = @version, endpoint = @endpoint, capabilities = @capabilities,
     labels = @labels, heartbeat_at = @heartbeatAt, revision = @revision WHERE id = @id`,
  );
  const upsertIdentity = db.prepare(
    `INSERT INTO agent_identities (agent_id, spiffe_id) VALUES (?, ?)
     ON CONFLICT(agent_id) DO UPDATE SET spiffe_id = excluded.spiffe_id`,
  );
  const del = db.prepare("DELETE FROM agents WHERE id = ?");
  const touch = db.prepare("UPDATE agents SET heartbeat_at = ? WHERE id = ?");
  const upsertLoad = db.prepare(
    `INSERT INTO agent_load (agent_id, in_flight, cpu, latency_p50_ms, latency_p99_ms, error_rate, reported_at)
     VALUES (@id, @inFlight, @cpu, @latencyP50Ms, @latencyP99Ms, @errorRate, @reportedAt)
     ON CONFLICT(agent_id) DO UPDATE SET in_flight = excluded.in_flight, cpu = excluded.cpu,
       latency_p50_ms = excluded.latency_p50_ms, latency_p99_ms = excluded.latency_p99_ms,
       error_rate = excluded.error_rate, reported_at = excluded.reported_at`,
  );
  const allKeys = db.prepare<[], IdempotencyRow>(
    `SELECT tenant, idempotency_key AS key, agent_id AS agentId, content_hash AS contentHash, created_at AS createdAt
     FROM agent_idempotency`,
  );
  const insertKey = db.prepare(
    `INSERT INTO agent_idempotency (tenant, idempotency_key, agent_id, content_hash, created_at)
     VALUES (@tenant, @key, @agentId, @contentHash, @createdAt)`,
  );
  const params = ({ spiffeId: _spiffeId, ...a }: AgentRow) => ({
    ...a,
    capabilities: JSON.stringify(a.capabilities),
    labels: JSON.stringify(a.labels),
  });
  return {
    loadAll: () =>
      all.all().map((r) => ({
        agent: {
          id: r.id,
          tenant: r.tenant,
          name: r.name,
          version: r.version,
          endpoint: r.endpoint,
          capabilities: JSON.parse(r.capabilities) as AgentRow["capabilities"],
          labels: JSON.parse(r.labels) as AgentRow["labels"],
          registeredAt: r.registered_at,
          heartbeatAt: r.heartbeat_at,
          revision: r.revision,
          spiffeId: r.spiffe_id ?? "",
        },
        load:
          r.reported_at === null
            ? undefined
            : {
                inFlight: r.in_flight ?? 0,
                cpu: r.cpu,
                latencyP50Ms: r.latency_p50_ms,
                latencyP99Ms: r.latency_p99_ms,
                errorRate: r.error_rate,
                reportedAt: r.reported_at,
              },
      })),
    insert: (a) => {
      insert.run(params(a));
      if (a.spiffeId) upsertIdentity.run(a.id, a.spiffeId);
    },
    update: (a) => {
      update.run(params(a));
      if (a.spiffeId) upsertIdentity.run(a.id, a.spiffeId);
    },
    delete: (id) => del.run(id).changes > 0,
    touch: (id, heartbeatAt, load) => {
      touch.run(heartbeatAt, id);
      if (load) upsertLoad.run({ id, ...load });
    },
    loadIdempotency: () => allKeys.all(),
    insertIdempotency: (row) => void insertKey.run(row),
  };
}
