import { ConfigError } from "../../common/errors.js";

/** A signing key shared with a client off the mesh. */
export interface SigningKey {
  /** Key id sent in x-nops-key-id. */
  id: string;
  /** The HMAC key, base64 in config; at least 32 bytes. */
  secret: Uint8Array;
  /** When set, the key only signs requests whose message names this tenant. */
  tenant?: string;
}

/** Options of signed-request verification (config section `requestSigning`). */
export interface RequestSigningOptions {
  /** Known keys. @default [] */
  keys: SigningKey[];
  /** Largest accepted |now - timestamp|, ms. @default 300000 */
  maxSkewMs: number;
  /** How long a nonce is remembered, ms; at least 2 × maxSkewMs so a nonce outlives every timestamp that could carry it. @default 600000 */
  nonceTtlMs: number;
  /** Headers every signed request must sign (lower-case), e.g. ["content-type"]. @default [] */
  requiredSignedHeaders: string[];
  /** Reject requests that carry no signature at all (otherwise they pass on to other authenticators). @default false */
  required: boolean;
}

/** Default clock skew tolerance: 5 minutes. */
export const DEFAULT_MAX_SKEW_MS = 300_000;
/** Default nonce retention: twice the skew. */
export const DEFAULT_NONCE_TTL_MS = 2 * DEFAULT_MAX_SKEW_MS;
/** Shortest accepted key. */
export const MIN_SECRET_BYTES = 32;

const KEY_ID_RE = /^[A-Za-z0-9._-]{1,128}$/;
const isObject = (v: unknown): v is Record<string, unknown> => typeof v === "object" && v !== null && !Array.isArray(v);

/** Fills defaults and validates; throws ConfigError naming the bad field. Secrets are base64. */
export function resolveRequestSigningOptions(input: unknown = {}, path = "requestSigning"): RequestSigningOptions {
  if (!isObject(input)) throw new ConfigError(`${path} must be an object`);
  for (const k of Object.keys(input)) {
    if (!["keys", "maxSkewMs", "nonceTtlMs", "requiredSignedHeaders", "required"].includes(k)) throw new ConfigError(`${path}.${k} is not a known option`);
  }
  const maxSkewMs = input.maxSkewMs ?? DEFAULT_MAX_SKEW_MS;
  if (!Number.isInteger(maxSkewMs) || (maxSkewMs as number) < 1000) throw new ConfigError(`${path}.maxSkewMs must be an integer >= 1000`);
  const nonceTtlMs = input.nonceTtlMs ?? 2 * (maxSkewMs as number);
  if (!Number.isInteger(nonceTtlMs) || (nonceTtlMs as number) < 2 * (maxSkewMs as number)) {
    throw new ConfigError(`${path}.nonceTtlMs must be an integer >= 2 × ${path}.maxSkewMs`);
  }
  if (input.keys !== undefined && !Array.isArray(input.keys)) throw new ConfigError(`${path}.keys must be a list`);
  const ids = new Set<string>();
  const keys = ((input.keys as unknown[] | undefined) ?? []).map((k, i): SigningKey => {
    const p = `${path}.keys[${i}]`;
    if (!isObject(k)) throw new ConfigError(`${p} must be an object`);
    if (typeof k.id !== "string" || !KEY_ID_RE.test(k.id)) throw new ConfigError(`${p}.id must match ${KEY_ID_RE.source}`);
    if (ids.has(k.id)) throw new ConfigError(`${p}.id is a duplicate`);
    ids.add(k.id);
    if (typeof k.secret !== "string" || !/^[A-Za-z0-9+/_-]+={0,2}$/.test(k.secret)) throw new ConfigError(`${p}.secret must be base64`);
    const secret = new Uint8Array(Buffer.from(k.secret, "base64"));
    if (secret.byteLength < MIN_SECRET_BYTES) throw new ConfigError(`${p}.secret must decode to at least ${MIN_SECRET_BYTES} bytes`);
    if (k.tenant !== undefined && typeof k.tenant !== "string") throw new ConfigError(`${p}.tenant must be a string`);
    return { id: k.id, secret, ...(k.tenant ? { tenant: k.tenant } : {}) };
  });
  const required = input.requiredSignedHeaders ?? [];
  if (!Array.isArray(required) || !required.every((h) => typeof h === "string" && /^[a-z0-9-]+$/.test(h))) {
    throw new ConfigError(`${path}.requiredSignedHeaders must be a list of lower-case header names`);
  }
  if (input.required !== undefined && typeof input.required !== "boolean") throw new ConfigError(`${path}.required must be a boolean`);
  return { keys, maxSkewMs: maxSkewMs as number, nonceTtlMs: nonceTtlMs as number, requiredSignedHeaders: [...(required as string[])], required: input.required ?? false };
}
