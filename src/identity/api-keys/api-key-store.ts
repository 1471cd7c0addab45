import { randomBytes, timingSafeEqual } from "node:crypto";
import { blake2b } from "@noble/hashes/blake2.js";
import { type Clock, ConfigError, readInt, readObject } from "../../common/index.js";
import type { Db } from "../../store/index.js";
import { CredentialError, isRole, type Principal, type Role } from "../principal.js";

/** A key as the kernel describes it; never the secret nor its hash. */
export interface ApiKeyRecord {
  keyId: string;
  tenant: string;
  /** "" for a tenant-wide key. */
  agentId: string;
  name: string;
  role: Role;
  scopes: string[];
  /** Invoke grants (see invoke-grant.ts); "*" for keys made before grants existed. */
  invoke: string[];
  createdAt: number;
  createdBy: string;
  rotatedAt: number | undefined;
  /** Until when the secret before the last rotation still works; undefined when none does. */
  graceUntil: number | undefined;
  revokedAt: number | undefined;
}

/** A key just minted: `key` is the only time the full key exists outside the caller. */
export interface IssuedApiKey {
  record: ApiKeyRecord;
  key: string;
}

/** What a new key is for. */
export interface NewApiKey {
  tenant: string;
  agentId: string;
  name: string;
  role: Role;
  scopes: string[];
  /** Invoke grants. @default [] (invokes nothing) */
  invoke?: string[];
  createdBy: string;
}

/** Query for list(). */
export interface ApiKeyQuery {
  /** undefined: every tenant. */
  tenant: string | undefined;
  includeRevoked: boolean;
  /** Keys after this key id (paging). */
  afterKeyId: string;
  limit: number;
}

/** Keys per agent and tenant, stored as keyed BLAKE2b hashes. */
export interface ApiKeyStore {
  create(key: NewApiKey): IssuedApiKey;
  /** Issues the next secret; the current one works until now + graceMs. undefined if unknown or revoked. */
  rotate(tenant: string, keyId: string, graceMs: number): IssuedApiKey | undefined;
  /** Revokes at once and forgets every secret hash. undefined if unknown. */
  revoke(tenant: string, keyId: string): ApiKeyRecord | undefined;
  list(query: ApiKeyQuery): ApiKeyRecord[];
  /** The principal for a presented key; throws CredentialError when it is not valid now. */
  verify(key: string): Principal;
}

/** API key settings. */
export interface ApiKeyOptions {
  /**
   * Secret key of the BLAKE2b hash (32..64 bytes; BLAKE2 keys are at most 64 bytes, RFC 7693 §2.5),
   * kept outside the database. Given in config as base64. Required.
   */
  pepper: Uint8Array;
  /** Grace period of a rotation when the request names none. @default DEFAULT_API_KEY_GRACE_MS (24 h) */
  defaultGraceMs: number;
  /** Longest grace period a rotation may ask for. @default DEFAULT_API_KEY_MAX_GRACE_MS (30 days) */
  maxGraceMs: number;
}

/** Default grace period of a rotation: one day. */
export const DEFAULT_API_KEY_GRACE_MS = 24 * 3600_000;
/** Longest grace period: thirty days. */
export const DEFAULT_API_KEY_MAX_GRACE_MS = 30 * 24 * 3600_000;

/** Validates API key settings (`pepper` as base64 of 32..64 bytes); throws ConfigError naming the field. */
export function resolveApiKeyOptions(input: unknown, path = "identity.apiKeys"): ApiKeyOptions {
  const o = readObject(input, path);
  // The pepper is checked by hand: the readers quote the bad value, and this one is a secret.
  let pepper: Uint8Array;
  if (o.pepper instanceof Uint8Array) pepper = o.pepper;
  else if (typeof o.pepper === "string" && /^[A-Za-z0-9+/_-]+={0,2}$/.test(o.pepper))
    pepper = Buffer.from(o.pepper, "base64");
  else throw new ConfigError(`${path}.pepper is required: base64 of 32..64 random bytes`);
  if (pepper.length < 32 || pepper.length > 64)
    throw new ConfigError(`${path}.pepper must decode to 32..64 bytes, got ${pepper.length}`);
  const maxGraceMs = readInt(o, "maxGraceMs", path, DEFAULT_API_KEY_MAX_GRACE_MS);
  const defaultGraceMs = readInt(o, "defaultGraceMs", path, DEFAULT_API_KEY_GRACE_MS);
  if (defaultGraceMs > maxGraceMs) throw new ConfigError(`${path}.defaultGraceMs must not exceed ${path}.maxGraceMs`);
  return { pepper: Uint8Array.from(pepper), defaultGraceMs, maxGraceMs };
}

/** Key id: 12 random bytes in hex, so it never contains the "_" separator. */
export const KEY_ID_PATTERN = /^[0-9a-f]{24}$/;
// nops_<keyId>_<secret>: the secret is 32 random bytes (256 bits) in base64url.
const KEY_PATTERN = /^nops_([0-9a-f]{24})_([A-Za-z0-9_-]{43})$/;

/** The key id a presented API key names (`nops_<keyId>_…`), whether or not its secret is well formed. */
export function apiKeyIdOf(key: string): string | undefined {
  return /^nops_([0-9a-f]{24})_/.exec(key)?.[1];
}

// A key without a grants row was made before grants existed (migration 0007) and keeps its reach.
const INVOKE_COLUMN = `COALESCE((SELECT g.invoke FROM api_key_grants g WHERE g.key_id = k.key_id), '["*"]') AS invoke`;

interface KeyRow {
  key_id: string;
  tenant: string;
  agent_id: string;
  name: string;
  role: string;
  scopes: string;
  invoke: string;
  created_at: number;
  created_by: string;
  rotated_at: number | null;
  revoked_at: number | null;
  grace_until: number | null;
}

interface SecretRow {
  hash: Buffer;
  tenant: string;
  agent_id: string;
  role: string;
  scopes: string;
  invoke: string;
}

function toRecord(row: KeyRow): ApiKeyRecord {
  // Only roles the service accepts are ever written; anything else would be a corrupted row.
  if (!isRole(row.role)) throw new CredentialError(`api key ${row.key_id} has an unknown role`);
  return {
    keyId: row.key_id,
    tenant: row.tenant,
    agentId: row.agent_id,
    name: row.name,
    role: row.role,
    scopes: JSON.parse(row.scopes) as string[],
    invoke: JSON.parse(row.invoke) as string[],
    createdAt: row.created_at,
    createdBy: row.created_by,
    rotatedAt: row.rotated_at ?? undefined,
    graceUntil: row.grace_until ?? undefined,
    revokedAt: row.revoked_at ?? undefined,
  };
}

/** Creates the store over the api_keys tables (migration 0003). */
export function createApiKeyStore(deps: { db: Db; clock: Clock }, options: ApiKeyOptions): ApiKeyStore {
  const { db, clock } = deps;
  const pepper = options.pepper;
  const hashOf = (key: string): Buffer => Buffer.from(blake2b(Buffer.from(key, "utf8"), { key: pepper, dkLen: 32 }));

  // grace_until is computed against the caller's "now" so an expired grace is never reported.
  const selectKey = db.prepare<{ keyId: string; now: number }, KeyRow>(
    `SELECT k.*, (SELECT MAX(expires_at) FROM api_key_secrets s WHERE s.key_id = k.key_id AND s.expires_at > @now) AS grace_until,
       ${INVOKE_COLUMN}
     FROM api_keys k WHERE k.key_id = @keyId`,
  );
  const listKeys = db.prepare<
    { tenant: string | null; all: number; after: string; limit: number; now: number },
    KeyRow
  >(
    `SELECT k.*, (SELECT MAX(expires_at) FROM api_key_secrets s WHERE s.key_id = k.key_id AND s.expires_at > @now) AS grace_until,
       ${INVOKE_COLUMN}
     FROM api_keys k
     WHERE (@tenant IS NULL OR k.tenant = @tenant) AND (@all = 1 OR k.revoked_at IS NULL) AND k.key_id > @after
     ORDER BY k.key_id LIMIT @limit`,
  );
  const insertKey = db.prepare(
    `INSERT INTO api_keys (key_id, tenant, agent_id, name, role, scopes, created_at, created_by)
     VALUES (@keyId, @tenant, @agentId, @name, @role, @scopes, @now, @createdBy)`,
  );
  const insertGrants = db.prepare("INSERT INTO api_key_grants (key_id, invoke) VALUES (?, ?)");
  const insertSecret = db.prepare(
    "INSERT INTO api_key_secrets (key_id, generation, hash, created_at, expires_at) VALUES (?, ?, ?, ?, NULL)",
  );
  const liveSecrets = db.prepare<[string, number], SecretRow>(
    `SELECT s.hash, k.tenant, k.agent_id, k.role, k.scopes, ${INVOKE_COLUMN}
     FROM api_key_secrets s JOIN api_keys k ON k.key_id = s.key_id
     WHERE s.key_id = ? AND k.revoked_at IS NULL AND (s.expires_at IS NULL OR s.expires_at > ?)`,
  );
  const nextGeneration = db.prepare<[string], { g: number }>(
    "SELECT COALESCE(MAX(generation), 0) + 1 AS g FROM api_key_secrets WHERE key_id = ?",
  );
  // Rotating again ends the previous grace at once: at most the current and the next secret work.
  const dropGraceSecrets = db.prepare("DELETE FROM api_key_secrets WHERE key_id = ? AND expires_at IS NOT NULL");
  const startGrace = db.prepare("UPDATE api_key_secrets SET expires_at = ? WHERE key_id = ? AND expires_at IS NULL");
  const markRotated = db.prepare("UPDATE api_keys SET rotated_at = ? WHERE key_id = ?");
  const markRevoked = db.prepare("UPDATE api_keys SET revoked_at = COALESCE(revoked_at, ?) WHERE key_id = ?");
  const dropSecrets = db.prepare("DELETE FROM api_key_secrets WHERE key_id = ?");

  function mint(keyId: string): { key: string; hash: Buffer } {
    const key = `nops_${keyId}_${randomBytes(32).toString("base64url")}`;
    return { key, hash: hashOf(key) };
  }

  function find(tenant: string, keyId: string, now: number): KeyRow | undefined {
    const row = selectKey.get({ keyId, now });
    return row && row.tenant === tenant ? row : undefined;
  }

  const createTx = db.transaction((input: NewApiKey): IssuedApiKey => {
    const now = clock.now();
    const keyId = randomBytes(12).toString("hex");
    const { key, hash } = mint(keyId);
    const { invoke = [], ...fields } = input;
    insertKey.run({ ...fields, keyId, scopes: JSON.stringify(input.scopes), now });
    insertGrants.run(keyId, JSON.stringify(invoke));
    insertSecret.run(keyId, 1, hash, now);
    return { key, record: toRecord(selectKey.get({ keyId, now }) as KeyRow) };
  });

  const rotateTx = db.transaction((tenant: string, keyId: string, graceMs: number): IssuedApiKey | undefined => {
    const now = clock.now();
    const row = find(tenant, keyId, now);
    if (!row || row.revoked_at !== null) return undefined;
    dropGraceSecrets.run(keyId);
    startGrace.run(now + graceMs, keyId);
    const { key, hash } = mint(keyId);
    insertSecret.run(keyId, nextGeneration.get(keyId)?.g ?? 1, hash, now);
    markRotated.run(now, keyId);
    return { key, record: toRecord(selectKey.get({ keyId, now }) as KeyRow) };
  });

  const revokeTx = db.transaction((tenant: string, keyId: string): ApiKeyRecord | undefined => {
    const now = clock.now();
    if (!find(tenant, keyId, now)) return undefined;
    markRevoked.run(now, keyId);
    dropSecrets.run(keyId);
    return toRecord(selectKey.get({ keyId, now }) as KeyRow);
  });

  return {
    create: (input) => createTx(input),
    rotate: (tenant, keyId, graceMs) => rotateTx(tenant, keyId, graceMs),
    revoke: (tenant, keyId) => revokeTx(tenant, keyId),
    list: (q) =>
      listKeys
        .all({
          tenant: q.tenant ?? null,
          all: q.includeRevoked ? 1 : 0,
          after: q.afterKeyId,
          limit: q.limit,
          now: clock.now(),
        })
        .map(toRecord),
    verify(key) {
      const m = KEY_PATTERN.exec(key);
      if (!m) throw new CredentialError("malformed api key");
      const keyId = m[1] as string;
      const presented = hashOf(key);
      const now = clock.now();
      let match: SecretRow | undefined;
      // Compare against every live secret (current and, during a grace, previous) in constant time.
      for (const s of liveSecrets.all(keyId, now))
        if (s.hash.length === presented.length && timingSafeEqual(s.hash, presented)) match = s;
      if (!match) throw new CredentialError(`api key ${keyId} is unknown, revoked, expired or wrong`);
      if (!isRole(match.role)) throw new CredentialError(`api key ${keyId} has an unknown role`);
      return {
        kind: "apikey",
        id: `apikey:${keyId}`,
        tenant: match.tenant,
        roles: [match.role],
        scopes: JSON.parse(match.scopes) as string[],
        capabilities: [],
        invoke: JSON.parse(match.invoke) as string[],
        ...(match.agent_id ? { agentId: match.agent_id } : {}),
      };
    },
  };
}
