import { closeSync, existsSync, fsyncSync, openSync, readFileSync, renameSync, writeSync } from "node:fs";
import {
  CheckpointError,
  openCheckpoint,
  parseVerifierKey,
  verifyConsistency,
  type SignedCheckpoint,
  type VerifierKey,
} from "../audit/index.js";

/** An edge the witness follows: its log's origin and the verifier keys pinned for it. */
export interface WitnessedEdge {
  origin: string;
  /** Verifier keys (`<name>+<hex id>+<base64 key>`): the current one and every retired one. */
  keys: string[];
}

/** A checkpoint an edge published, with the proof that it extends the edge's previous one. */
export interface CheckpointSubmission {
  /** The signed note. */
  checkpoint: string;
  /** Tree size of the edge's previous checkpoint the proof starts from. */
  previousTreeSize: number;
  consistencyProof: Uint8Array[];
  /** Position in the hub stream, stored so a restarted witness resumes after it. */
  streamSeq?: number;
}

/** The checkpoint the witness holds for an edge. */
export interface WitnessedCheckpoint {
  edge: string;
  note: string;
  size: number;
  /** Hex root hash. */
  root: string;
  /** When the witness accepted it (ms since epoch). */
  acceptedAt: number;
  streamSeq: number;
}

/** What the witness made of a submission. */
export type WitnessVerdict =
  | { accepted: true; checkpoint: WitnessedCheckpoint }
  | { accepted: false; reason: string; held?: WitnessedCheckpoint };

/** Keeps the latest verified checkpoint of each edge. */
export interface Witness {
  /** Checks a checkpoint (signature by a pinned key, origin, consistency with the held one) and keeps it if good. */
  submit(edge: string, submission: CheckpointSubmission): WitnessVerdict;
  /** The checkpoint held for an edge. */
  latest(edge: string): WitnessedCheckpoint | undefined;
  /** Every edge's held checkpoint. */
  all(): WitnessedCheckpoint[];
}

interface WitnessState {
  edges: Record<string, WitnessedCheckpoint>;
}

function loadState(path: string): WitnessState {
  if (!existsSync(path)) return { edges: {} };
  const parsed = JSON.parse(readFileSync(path, "utf8")) as WitnessState;
  if (!parsed || typeof parsed !== "object" || typeof parsed.edges !== "object")
    throw new Error(`${path} is not a witness state file`);
  return parsed;
}

// Written beside and renamed after an fsync: a crash leaves the old state or the new, never half of one.
function saveState(path: string, state: WitnessState): void {
  const tmp = `${path}.tmp-${process.pid}`;
  const fd = openSync(tmp, "w", 0o644);
  try {
    writeSync(fd, JSON.stringify(state, null, 2) + "\n");
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  renameSync(tmp, path);
}

const hex = (b: Uint8Array) => Buffer.from(b).toString("hex");

/**
 * Creates the witness over a JSON state file. A checkpoint is accepted only when a key pinned
 * for its edge signed it, its origin is the edge's, and it is consistent with the checkpoint
 * held: the same tree (same size, same root), or a larger tree with an RFC 6962 consistency
 * proof from the held size. Smaller trees (a rewound log) and different roots at the same size
 * (a fork) are refused and the held checkpoint stays. The first checkpoint of an edge is
 * accepted on its signature alone (trust on first use).
 */
export function createWitness(
  options: { stateFile: string; edges: Record<string, WitnessedEdge> },
  now: () => number = Date.now,
): Witness {
  const state = loadState(options.stateFile);
  const keys = new Map<string, VerifierKey[]>();
  for (const [edge, cfg] of Object.entries(options.edges))
    keys.set(
      edge,
      cfg.keys.map((k) => parseVerifierKey(k)),
    );

  const refuse = (edge: string, reason: string): WitnessVerdict => ({
    accepted: false,
    reason,
    held: state.edges[edge],
  });

  return {
    submit(edge, submission) {
      const cfg = options.edges[edge];
      if (!cfg) return refuse(edge, `edge ${edge} is not witnessed here`);
      let c: SignedCheckpoint;
      try {
        c = openCheckpoint(submission.checkpoint, keys.get(edge)!, cfg.origin);
      } catch (e) {
        if (e instanceof CheckpointError) return refuse(edge, e.message);
        throw e;
      }
      const held = state.edges[edge];
      const seq = submission.streamSeq ?? held?.streamSeq ?? 0;
      if (held) {
        const heldRoot = Buffer.from(held.root, "hex");
        if (c.size < held.size)
          return refuse(edge, `tree size ${c.size} is below the held checkpoint's ${held.size}: the log was rewound`);
        if (c.size === held.size) {
          if (!heldRoot.equals(Buffer.from(c.root)))
            return refuse(edge, `a different root at the held tree size ${held.size}: the log was forked`);
          if (seq > held.streamSeq) state.edges[edge] = { ...held, streamSeq: seq };
          return { accepted: true, checkpoint: state.edges[edge]! };
        }
        if (submission.previousTreeSize !== held.size)
          return refuse(
            edge,
            `the proof starts at tree size ${submission.previousTreeSize}, the held checkpoint is at ${held.size}`,
          );
        if (!verifyConsistency(held.size, heldRoot, c.size, c.root, submission.consistencyProof))
          return refuse(
            edge,
            `the consistency proof from ${held.size} to ${c.size} does not verify: the log was rewritten`,
          );
      }
      const accepted: WitnessedCheckpoint = {
        edge,
        note: c.note,
        size: c.size,
        root: hex(c.root),
        acceptedAt: now(),
        streamSeq: seq,
      };
      state.edges[edge] = accepted;
      saveState(options.stateFile, state);
      return { accepted: true, checkpoint: accepted };
    },
    latest: (edge) => state.edges[edge],
    all: () => Object.values(state.edges),
  };
}
