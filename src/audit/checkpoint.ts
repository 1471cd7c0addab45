import { keyId, verifyEd25519, type Signer, type VerifierKey } from "./signer.js";
import { HASH_SIZE } from "./merkle.js";

/**
 * Checkpoints in the C2SP tlog-checkpoint format, signed as C2SP signed notes:
 *
 *   <origin>\n<tree size>\n<base64 root hash>\n   (the note text, which is what is signed)
 *   \n
 *   — <key name> <base64(4-byte key id || 64-byte Ed25519 signature)>\n   (one line per signature)
 */
export interface Checkpoint {
  /** The log's identity, e.g. "nops.kernel/edge-1/audit". */
  origin: string;
  size: number;
  root: Uint8Array;
}

/** A checkpoint with its signed-note text. */
export interface SignedCheckpoint extends Checkpoint {
  /** The whole signed note, signature lines included. */
  note: string;
}

/** Why a note was refused. */
export class CheckpointError extends Error {
  override name = "CheckpointError";
}

const SIGNATURE_PREFIX = "\u2014 ";

/** The note text of a checkpoint (the signed bytes). */
export function checkpointBody(c: Checkpoint): string {
  if (!c.origin || c.origin.includes("\n")) throw new CheckpointError("checkpoint origin must be one non-empty line");
  return `${c.origin}\n${c.size}\n${Buffer.from(c.root).toString("base64")}\n`;
}

/** Signs a checkpoint with each signer, in order. */
export async function signCheckpoint(c: Checkpoint, signers: readonly Signer[]): Promise<SignedCheckpoint> {
  const body = checkpointBody(c);
  const lines: string[] = [];
  for (const s of signers) {
    const sig = await s.sign(Buffer.from(body, "utf8"));
    const blob = Buffer.concat([keyId(s.name, s.publicKey), sig]).toString("base64");
    lines.push(`${SIGNATURE_PREFIX}${s.name} ${blob}\n`);
  }
  return { ...c, note: `${body}\n${lines.join("")}` };
}

/** Parses the checkpoint body of a note without checking any signature. */
export function parseCheckpointBody(body: string): Checkpoint {
  const lines = body.split("\n");
  if (lines.length < 4 || lines.at(-1) !== "")
    throw new CheckpointError("checkpoint needs origin, size and root lines");
  const [origin, sizeText, rootText] = lines as [string, string, string];
  if (!origin) throw new CheckpointError("checkpoint origin is empty");
  if (!/^(0|[1-9][0-9]{0,15})$/.test(sizeText) || !Number.isSafeInteger(Number(sizeText)))
    throw new CheckpointError(`checkpoint size ${JSON.stringify(sizeText)} is not a decimal integer`);
  const root = Buffer.from(rootText, "base64");
  if (root.length !== HASH_SIZE || root.toString("base64") !== rootText)
    throw new CheckpointError(`checkpoint root ${JSON.stringify(rootText)} is not a base64 SHA-256 hash`);
  return { origin, size: Number(sizeText), root: new Uint8Array(root) };
}

/**
 * Opens a signed checkpoint: at least one signature must be by one of `keys` (matched by name
 * and key id) and valid. Signatures by unknown keys are ignored, a bad signature by a known key
 * is an error. With `origin`, the checkpoint must be of that log.
 */
export function openCheckpoint(
  note: string,
  keys: readonly VerifierKey[],
  origin?: string,
): SignedCheckpoint & { signedBy: string[] } {
  const split = note.lastIndexOf("\n\n");
  if (split === -1 || !note.endsWith("\n")) throw new CheckpointError("not a signed note (no signature block)");
  const body = note.slice(0, split + 1);
  const sigLines = note.slice(split + 2, -1).split("\n");
  const signedBy: string[] = [];
  for (const line of sigLines) {
    if (!line.startsWith(SIGNATURE_PREFIX))
      throw new CheckpointError(`malformed signature line ${JSON.stringify(line)}`);
    const [name, blob, ...rest] = line.slice(SIGNATURE_PREFIX.length).split(" ");
    if (!name || !blob || rest.length) throw new CheckpointError(`malformed signature line ${JSON.stringify(line)}`);
    const raw = Buffer.from(blob, "base64");
    if (raw.length < 5) throw new CheckpointError(`signature by ${name} is too short`);
    const id = raw.subarray(0, 4);
    const key = keys.find((k) => k.name === name && Buffer.compare(k.id, id) === 0);
    if (!key) continue;
    if (!verifyEd25519(key.publicKey, Buffer.from(body, "utf8"), raw.subarray(4)))
      throw new CheckpointError(`the signature by ${name} (${id.toString("hex")}) does not verify`);
    signedBy.push(`${name}+${id.toString("hex")}`);
  }
  if (!signedBy.length) throw new CheckpointError("the checkpoint carries no signature by a trusted key");
  const c = parseCheckpointBody(body);
  if (origin !== undefined && c.origin !== origin)
    throw new CheckpointError(`checkpoint is of log ${JSON.stringify(c.origin)}, expected ${JSON.stringify(origin)}`);
  return { ...c, note, signedBy };
}
