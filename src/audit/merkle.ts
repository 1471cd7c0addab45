import { createHash } from "node:crypto";

/**
 * RFC 6962 / RFC 9162 Merkle tree hashing with domain separation: a leaf is SHA-256(0x00 || data),
 * an interior node SHA-256(0x01 || left || right), the empty tree SHA-256("").
 */
export const HASH_SIZE = 32;

const LEAF_PREFIX = Buffer.from([0x00]);
const NODE_PREFIX = Buffer.from([0x01]);

/** The hash of the empty tree, SHA-256 of no bytes. */
export const EMPTY_ROOT: Uint8Array = createHash("sha256").digest();

/** MTH({d}) = SHA-256(0x00 || d). */
export function leafHash(data: Uint8Array): Uint8Array {
  return createHash("sha256").update(LEAF_PREFIX).update(data).digest();
}

/** SHA-256(0x01 || left || right). */
export function nodeHash(left: Uint8Array, right: Uint8Array): Uint8Array {
  return createHash("sha256").update(NODE_PREFIX).update(left).update(right).digest();
}

/** The largest power of two strictly smaller than n (n >= 2). */
export function splitPoint(n: number): number {
  let k = 1;
  while (k * 2 < n) k *= 2;
  return k;
}

/**
 * Reads the hash of the perfect subtree of 2^level leaves that starts at leaf `index << level`
 * (level 0: the leaf hashes). The audit log stores exactly these nodes.
 */
export type NodeReader = (level: number, index: number) => Uint8Array;

const isPowerOfTwo = (n: number): boolean => n > 0 && (n & (n - 1)) === 0;

/** MTH(D[start:end]) from the stored perfect subtrees: O(log n) reads for any range the proofs use. */
export function subtreeHash(read: NodeReader, start: number, end: number): Uint8Array {
  const size = end - start;
  if (size === 0) return EMPTY_ROOT;
  if (isPowerOfTwo(size) && start % size === 0) return read(Math.log2(size), start / size);
  const k = splitPoint(size);
  return nodeHash(subtreeHash(read, start, start + k), subtreeHash(read, start + k, end));
}

/** The root hash of the first `size` leaves. */
export function rootHash(read: NodeReader, size: number): Uint8Array {
  return subtreeHash(read, 0, size);
}

/** RFC 6962 2.1.1 PATH(m, D[start:end]): the audit path of leaf m in the tree of leaves [start, end). */
export function inclusionProof(read: NodeReader, index: number, size: number): Uint8Array[] {
  if (!(index >= 0 && index < size)) throw new RangeError(`leaf ${index} is not in a tree of ${size} leaves`);
  const path: Uint8Array[] = [];
  const walk = (m: number, start: number, end: number): void => {
    const n = end - start;
    if (n <= 1) return;
    const k = splitPoint(n);
    if (m < k) {
      walk(m, start, start + k);
      path.push(subtreeHash(read, start + k, end));
    } else {
      walk(m - k, start + k, end);
      path.push(subtreeHash(read, start, start + k));
    }
  };
  walk(index, 0, size);
  return path;
}

/** RFC 6962 2.1.2 PROOF(m, D[n]): the consistency proof from the tree of m leaves to the tree of n. */
export function consistencyProof(read: NodeReader, m: number, n: number): Uint8Array[] {
  if (!(m >= 0 && m <= n)) throw new RangeError(`no consistency proof from size ${m} to size ${n}`);
  const proof: Uint8Array[] = [];
  if (m === 0 || m === n) return proof;
  // SUBPROOF(m, D[start:end], b)
  const sub = (mm: number, start: number, end: number, complete: boolean): void => {
    const size = end - start;
    if (mm === size) {
      if (!complete) proof.push(subtreeHash(read, start, end));
      return;
    }
    const k = splitPoint(size);
    if (mm <= k) {
      sub(mm, start, start + k, complete);
      proof.push(subtreeHash(read, start + k, end));
    } else {
      sub(mm - k, start + k, end, false);
      proof.push(subtreeHash(read, start, start + k));
    }
  };
  sub(m, 0, n, true);
  return proof;
}

const equal = (a: Uint8Array, b: Uint8Array): boolean => Buffer.compare(a, b) === 0;

/** RFC 9162 2.1.3.2: does `proof` show leaf `index` with hash `leaf` in the tree of `size` leaves with `root`? */
export function verifyInclusion(
  leaf: Uint8Array,
  index: number,
  size: number,
  proof: readonly Uint8Array[],
  root: Uint8Array,
): boolean {
  if (!(index >= 0 && index < size)) return false;
  let fn = index;
  let sn = size - 1;
  let r = leaf;
  for (const p of proof) {
    if (sn === 0) return false;
    if (fn % 2 === 1 || fn === sn) {
      r = nodeHash(p, r);
      if (fn % 2 === 0) {
        while (fn % 2 === 0 && fn !== 0) {
          fn = Math.floor(fn / 2);
          sn = Math.floor(sn / 2);
        }
      }
    } else {
      r = nodeHash(r, p);
    }
    fn = Math.floor(fn / 2);
    sn = Math.floor(sn / 2);
  }
  return sn === 0 && equal(r, root);
}

/** RFC 9162 2.1.4.2: does `proof` show the tree (size1, root1) is a prefix of the tree (size2, root2)? */
export function verifyConsistency(
  size1: number,
  root1: Uint8Array,
  size2: number,
  root2: Uint8Array,
  proof: readonly Uint8Array[],
): boolean {
  if (size1 < 0 || size1 > size2) return false;
  if (size1 === size2) return proof.length === 0 && equal(root1, root2);
  if (size1 === 0) return proof.length === 0;
  if (proof.length === 0) return false;
  const path = isPowerOfTwo(size1) ? [root1, ...proof] : [...proof];
  let fn = size1 - 1;
  let sn = size2 - 1;
  while (fn % 2 === 1) {
    fn = Math.floor(fn / 2);
    sn = Math.floor(sn / 2);
  }
  let fr = path[0]!;
  let sr = path[0]!;
  for (const c of path.slice(1)) {
    if (sn === 0) return false;
    if (fn % 2 === 1 || fn === sn) {
      fr = nodeHash(c, fr);
      sr = nodeHash(c, sr);
      if (fn % 2 === 0) {
        while (fn % 2 === 0 && fn !== 0) {
          fn = Math.floor(fn / 2);
          sn = Math.floor(sn / 2);
        }
      }
    } else {
      sr = nodeHash(sr, c);
    }
    fn = Math.floor(fn / 2);
    sn = Math.floor(sn / 2);
  }
  return sn === 0 && equal(fr, root1) && equal(sr, root2);
}
