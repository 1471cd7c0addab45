import {
  ConfigError,
  readBool,
  readInt,
  readObject,
  readOptionalString,
  readSection,
  readString,
  readStringList,
} from "../../common/index.js";

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
  /**
   * How long a nonce is remembered, ms; at least 2 × maxSkewMs so a nonce outlives every timestamp that
   * could carry it. @default 600000
   */
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

/** Every default, also the set of known keys. */
export const DEFAULT_REQUEST_SIGNING_OPTIONS: Readonly<RequestSigningOptions> = {
  keys: [],
  maxSkewMs: DEFAULT_MAX_SKEW_MS,
  nonceTtlMs: DEFAULT_NONCE_TTL_MS,
  requiredSignedHeaders: [],
  required: false,
};

const KEY_ID_RE = /^[A-Za-z0-9._-]{1,128}$/;

/** Fills defaults and validates; throws ConfigError naming the bad field. Secrets are base64. */
export function resolveRequestSigningOptions(input: unknown = {}, path = "requestSigning"): RequestSigningOptions {
  const s = readSection(input, path, DEFAULT_REQUEST_SIGNING_OPTIONS);
  const maxSkewMs = readInt(s, "maxSkewMs", path, DEFAULT_MAX_SKEW_MS, 1000);
  const nonceTtlMs = readInt(s, "nonceTtlMs", path, 2 * maxSkewMs);
  if (nonceTtlMs < 2 * maxSkewMs)
    throw new ConfigError(`${path}.nonceTtlMs must be an integer >= 2 × ${path}.maxSkewMs`);
  if (s.keys !== undefined && !Array.isArray(s.keys)) throw new ConfigError(`${path}.keys must be a list`);
  const ids = new Set<string>();
  const keys = ((s.keys as unknown[] | undefined) ?? []).map((raw, i): SigningKey => {
    const p = `${path}.keys[${i}]`;
    const k = readObject(raw, p);
    const id = readString(k, "id", p, "", { nonEmpty: true, pattern: KEY_ID_RE });
    if (ids.has(id)) throw new ConfigError(`${p}.id is a duplicate`);
    ids.add(id);
    // Checked by hand: the readers quote the bad value, and this one is a secret.
    if (typeof k.secret !== "string" || !/^[A-Za-z0-9+/_-]+={0,2}$/.test(k.secret))
      throw new ConfigError(`${p}.secret must be base64`);
    const secret = new Uint8Array(Buffer.from(k.secret, "base64"));
    if (secret.byteLength < MIN_SECRET_BYTES)
      throw new ConfigError(`${p}.secret must decode to at least ${MIN_SECRET_BYTES} bytes`);
    const tenant = readOptionalString(k, "tenant", p);
    return { id, secret, ...(tenant ? { tenant } : {}) };
  });
  return {
    keys,
    maxSkewMs,
    nonceTtlMs,
    requiredSignedHeaders: readStringList(s, "requiredSignedHeaders", path, [], { pattern: /^[a-z0-9-]+$/ }),
    required: readBool(s, "required", path, false),
  };
}
