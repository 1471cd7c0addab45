import { randomBytes } from "node:crypto";
import bcrypt from "bcryptjs";

/** bcrypt cost of the edge secrets' hashes in the hub config (nats-server verifies one per leaf connect). */
export const EDGE_SECRET_BCRYPT_COST = 11;

/** A new edge link secret: the plain secret for the edge (0600 file) and its bcrypt hash for the hub config. */
export function newEdgeSecret(cost = EDGE_SECRET_BCRYPT_COST): { secret: string; hash: string } {
  // 32 random bytes, base64url: only characters a NATS config string and a leafnode URL carry as is.
  const secret = randomBytes(32).toString("base64url");
  return { secret, hash: bcrypt.hashSync(secret, cost) };
}
