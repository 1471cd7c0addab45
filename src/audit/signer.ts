import {
  createHash,
  createPrivateKey,
  createPublicKey,
  generateKeyPairSync,
  sign,
  verify,
  type KeyObject,
} from "node:crypto";
import { chmodSync, existsSync, openSync, readFileSync, renameSync, statSync, writeFileSync, closeSync } from "node:fs";
import { dirname, relative, resolve, isAbsolute } from "node:path";
import { ConfigError } from "../common/index.js";

/**
 * A signing key behind an interface (docs/audit.md): the audit checkpoints and release artifacts
 * are signed through it. The default keeps an Ed25519 key in a file; a KMS or HSM adapter
 * implements the same three members (the private key never leaves the device, `sign` is async).
 */
export interface Signer {
  /** The key name, as it appears in signed notes (no spaces, no "+"). */
  readonly name: string;
  /** The raw 32-byte Ed25519 public key. */
  readonly publicKey: Uint8Array;
  /** Ed25519 signature over `message`. */
  sign(message: Uint8Array): Promise<Uint8Array>;
}

/** The C2SP signed-note signature type byte of Ed25519. */
const ALG_ED25519 = 0x01;
const KEY_NAME = /^[\x21-\x7e]+$/;

/** Throws when `name` cannot be a signed-note key name (printable, no spaces, no "+"). */
export function checkKeyName(name: string): void {
  if (!KEY_NAME.test(name) || name.includes("+"))
    throw new ConfigError(`key name ${JSON.stringify(name)} must be printable ASCII without spaces or "+"`);
}

/** The signed-note key id: the first 4 bytes of SHA-256(name || "\n" || 0x01 || public key). */
export function keyId(name: string, publicKey: Uint8Array): Uint8Array {
  return createHash("sha256")
    .update(name)
    .update("\n")
    .update(Buffer.from([ALG_ED25519]))
    .update(publicKey)
    .digest()
    .subarray(0, 4);
}

/** A public key a verifier pins: name, key id and the Ed25519 key. */
export interface VerifierKey {
  name: string;
  id: Uint8Array;
  publicKey: Uint8Array;
}

/** Encodes a verifier key as `<name>+<hex key id>+<base64(0x01 || key)>` (the signed-note text form). */
export function encodeVerifierKey(name: string, publicKey: Uint8Array): string {
  checkKeyName(name);
  const id = Buffer.from(keyId(name, publicKey)).toString("hex");
  return `${name}+${id}+${Buffer.concat([Buffer.from([ALG_ED25519]), publicKey]).toString("base64")}`;
}

// Splits at the first n - 1 "+": the last field (base64) keeps any "+" it holds.
function splitFields(text: string, n: number): string[] | undefined {
  const out: string[] = [];
  let rest = text;
  for (let i = 0; i < n - 1; i++) {
    const at = rest.indexOf("+");
    if (at <= 0) return undefined;
    out.push(rest.slice(0, at));
    rest = rest.slice(at + 1);
  }
  return rest ? [...out, rest] : undefined;
}

/** The verifier key of a signer (what a verifier pins for it). */
export function verifierKeyOf(signer: Pick<Signer, "name" | "publicKey">): VerifierKey {
  checkKeyName(signer.name);
  return { name: signer.name, id: keyId(signer.name, signer.publicKey), publicKey: signer.publicKey };
}

/** Parses a verifier key string; throws a ConfigError naming what is wrong. */
export function parseVerifierKey(text: string): VerifierKey {
  // The base64 key may itself hold "+": only the first two separate fields.
  const parts = splitFields(text.trim(), 3);
  if (!parts) throw new ConfigError(`verifier key must be <name>+<hex id>+<base64 key>, got ${text.trim()}`);
  const [name, idHex, keyB64] = parts as [string, string, string];
  checkKeyName(name);
  const raw = Buffer.from(keyB64, "base64");
  if (raw.length !== 33 || raw[0] !== ALG_ED25519 || raw.toString("base64") !== keyB64)
    throw new ConfigError(`verifier key ${name}: the key is not a base64 Ed25519 key (0x01 and 32 bytes)`);
  const publicKey = new Uint8Array(raw.subarray(1));
  const id = keyId(name, publicKey);
  if (!/^[0-9a-f]{8}$/.test(idHex) || Buffer.from(id).toString("hex") !== idHex)
    throw new ConfigError(`verifier key ${name}: key id ${idHex} does not match the key`);
  return { name, id, publicKey };
}

const SPKI_PREFIX = Buffer.from("302a300506032b6570032100", "hex");
const PKCS8_PREFIX = Buffer.from("302e020100300506032b657004220420", "hex");

/** Verifies an Ed25519 signature with a raw public key. */
export function verifyEd25519(publicKey: Uint8Array, message: Uint8Array, signature: Uint8Array): boolean {
  if (signature.length !== 64) return false;
  const key = createPublicKey({ key: Buffer.concat([SPKI_PREFIX, publicKey]), format: "der", type: "spki" });
  return verify(null, message, key, signature);
}

function rawPublicKey(key: KeyObject): Uint8Array {
  const der = createPublicKey(key).export({ format: "der", type: "spki" });
  return new Uint8Array(der.subarray(SPKI_PREFIX.length));
}

function rawSeed(key: KeyObject): Buffer {
  return key.export({ format: "der", type: "pkcs8" }).subarray(PKCS8_PREFIX.length);
}

/** A signer over an in-memory Ed25519 private key (tests; the file signer is built on it). */
export function createKeySigner(name: string, privateKey: KeyObject): Signer {
  checkKeyName(name);
  if (privateKey.asymmetricKeyType !== "ed25519") throw new ConfigError(`key ${name} is not an Ed25519 key`);
  const publicKey = rawPublicKey(privateKey);
  return { name, publicKey, sign: async (message) => new Uint8Array(sign(null, message, privateKey)) };
}

/** A fresh Ed25519 signer that lives in memory only. */
export function generateSigner(name: string): Signer {
  return createKeySigner(name, generateKeyPairSync("ed25519").privateKey);
}

/** Options of the file-based signer. */
export interface FileSignerOptions {
  /** The key file: `PRIVATE+KEY+<name>+<hex id>+<base64(0x01 || seed)>`, mode 0600. */
  path: string;
  /** The key name; a new key gets it, an existing key must carry it. */
  name: string;
  /** The key file must not be under this directory (the data directory: a copy of it must not carry the key). */
  forbiddenDir?: string;
  /** Create the key when the file does not exist. @default true */
  create?: boolean;
}

function encodePrivate(name: string, key: KeyObject): string {
  const id = Buffer.from(keyId(name, rawPublicKey(key))).toString("hex");
  return `PRIVATE+KEY+${name}+${id}+${Buffer.concat([Buffer.from([ALG_ED25519]), rawSeed(key)]).toString("base64")}\n`;
}

function decodePrivate(path: string, text: string): { name: string; key: KeyObject } {
  const parts = splitFields(text.trim(), 5);
  if (!parts || parts[0] !== "PRIVATE" || parts[1] !== "KEY")
    throw new ConfigError(`${path}: not a signing key (PRIVATE+KEY+<name>+<id>+<base64 key>)`);
  const [, , name, idHex, b64] = parts as [string, string, string, string, string];
  const raw = Buffer.from(b64, "base64");
  if (raw.length !== 33 || raw[0] !== ALG_ED25519) throw new ConfigError(`${path}: not an Ed25519 signing key`);
  const key = createPrivateKey({ key: Buffer.concat([PKCS8_PREFIX, raw.subarray(1)]), format: "der", type: "pkcs8" });
  if (Buffer.from(keyId(name, rawPublicKey(key))).toString("hex") !== idHex)
    throw new ConfigError(`${path}: key id ${idHex} does not match the key`);
  return { name, key };
}

function checkPlacement(path: string, forbiddenDir: string | undefined): void {
  if (!forbiddenDir) return;
  const rel = relative(resolve(forbiddenDir), resolve(path));
  if (rel === "" || (!rel.startsWith("..") && !isAbsolute(rel)))
    throw new ConfigError(`signing key ${path} must be outside the data directory ${forbiddenDir}`);
}

function writeKeyFile(path: string, text: string): void {
  // Written beside the target and renamed: a crash never leaves a half-written key.
  const tmp = `${path}.tmp-${process.pid}`;
  const fd = openSync(tmp, "wx", 0o600);
  try {
    writeFileSync(fd, text);
  } finally {
    closeSync(fd);
  }
  chmodSync(tmp, 0o600);
  renameSync(tmp, path);
}

/**
 * The file-based signer: loads (or creates) an Ed25519 key in a 0600 file outside the data
 * directory. A key file readable by group or others is refused.
 */
export function openFileSigner(options: FileSignerOptions): Signer {
  checkKeyName(options.name);
  checkPlacement(options.path, options.forbiddenDir);
  if (!existsSync(options.path)) {
    if (options.create === false) throw new ConfigError(`signing key ${options.path} does not exist`);
    if (!existsSync(dirname(options.path)))
      throw new ConfigError(`signing key directory ${dirname(options.path)} does not exist`);
    writeKeyFile(options.path, encodePrivate(options.name, generateKeyPairSync("ed25519").privateKey));
  }
  const mode = statSync(options.path).mode & 0o777;
  if (mode & 0o077)
    throw new ConfigError(`signing key ${options.path} has mode ${mode.toString(8)}: it must be 0600 (chmod 600)`);
  const { name, key } = decodePrivate(options.path, readFileSync(options.path, "utf8"));
  if (name !== options.name)
    throw new ConfigError(`signing key ${options.path} is named ${name}, expected ${options.name}`);
  return createKeySigner(name, key);
}

/** The file listing retired verifier keys of a key file, one a line. */
export const retiredKeysPath = (keyPath: string): string => `${keyPath}.retired`;

/**
 * Rotates the key in `path`: the old verifier key is appended to `<path>.retired` (so checkpoints
 * it signed stay verifiable), then a new key replaces it. Returns the new and the retired verifier keys.
 */
export function rotateFileSigner(options: FileSignerOptions): { current: string; retired: string } {
  const old = openFileSigner({ ...options, create: false });
  const retired = encodeVerifierKey(old.name, old.publicKey);
  writeFileSync(retiredKeysPath(options.path), retired + "\n", { flag: "a", mode: 0o644 });
  const fresh = generateKeyPairSync("ed25519").privateKey;
  writeKeyFile(options.path, encodePrivate(options.name, fresh));
  return { current: encodeVerifierKey(options.name, rawPublicKey(fresh)), retired };
}

/** The verifier keys of a key file: the current one first, then every retired one. */
export function fileVerifierKeys(options: FileSignerOptions): string[] {
  const current = openFileSigner({ ...options, create: false });
  const keys = [encodeVerifierKey(current.name, current.publicKey)];
  const retiredPath = retiredKeysPath(options.path);
  if (existsSync(retiredPath))
    for (const line of readFileSync(retiredPath, "utf8").split("\n")) if (line.trim()) keys.push(line.trim());
  return keys;
}
