import { X509Certificate, type KeyObject } from "node:crypto";
import { CompactSign, compactVerify, decodeProtectedHeader } from "jose";
import { LRUCache } from "lru-cache";
import { KernelError, type Clock } from "../common/index.js";
import { verifyPeer, PeerVerificationError, type VerifiedPeer, type X509Bundle } from "../identity/index.js";

/** Why a peer's signed statement was refused; `code` is the RPC code it maps to. */
export class FederationRefusal extends KernelError {
  override name = "FederationRefusal";
  constructor(
    readonly code:
      | "permission-denied"
      | "unauthenticated"
      | "invalid-argument"
      | "failed-precondition"
      | "resource-exhausted",
    readonly reason: string,
    options?: { cause?: unknown },
  ) {
    super(reason, options);
  }
}

/** What a kernel signs with: its current SVID (chain and key). */
export interface SigningIdentity {
  readonly spiffeId: string;
  readonly certificates: readonly Uint8Array[];
  readonly privateKey: KeyObject;
}

// SVID keys are EC P-256/P-384 or RSA (X509-SVID §3); JWS algorithms follow the key.
function algorithmFor(key: KeyObject): string {
  if (key.asymmetricKeyType === "ec") {
    const curve = key.asymmetricKeyDetails?.namedCurve;
    if (curve === "prime256v1") return "ES256";
    if (curve === "secp384r1") return "ES384";
    throw new KernelError(`SVID key curve ${curve ?? "unknown"} cannot sign a JWS`);
  }
  if (key.asymmetricKeyType === "rsa") return "RS256";
  if (key.asymmetricKeyType === "ed25519") return "EdDSA";
  throw new KernelError(`SVID key type ${key.asymmetricKeyType ?? "unknown"} cannot sign a JWS`);
}

const ALGORITHMS = ["ES256", "ES384", "RS256", "EdDSA"];

/** Signs `payload` as a compact JWS whose x5c header carries the SVID chain (RFC 7515 §4.1.6). */
export async function signWithSvid(identity: SigningIdentity, typ: string, payload: Uint8Array): Promise<string> {
  return new CompactSign(payload)
    .setProtectedHeader({
      alg: algorithmFor(identity.privateKey),
      typ,
      x5c: identity.certificates.map((c) => Buffer.from(c).toString("base64")),
    })
    .sign(identity.privateKey);
}

/** A verified statement of a peer kernel. */
export interface VerifiedStatement {
  payload: Uint8Array;
  peer: VerifiedPeer;
  /** DER of the signing leaf: a later statement of the same exchange must come from the same SVID. */
  leafDer: Uint8Array;
  /** The whole x5c chain, leaf first. */
  chain: Uint8Array[];
}

/** A signer's chain as verified against one bundle, with the leaf's public key. */
interface VerifiedSigner {
  peer: VerifiedPeer;
  key: KeyObject;
  leafDer: Uint8Array;
  chain: Uint8Array[];
}

// A signer's chain verifies the same until its leaf expires or the peer's bundle changes (a changed
// bundle is a new object): remember it with the bundle it verified against, so a peer's per-call
// delegation costs one signature check instead of a chain validation and two certificate parses.
const verifiedSigners = new LRUCache<string, VerifiedSigner & { bundle: X509Bundle }>({ max: 64 });

function verifySigner(
  x5c: unknown[],
  expected: { spiffeId: string; bundle: X509Bundle },
  clock: Clock,
): VerifiedSigner {
  const key = x5c.join(",");
  const hit = verifiedSigners.get(key);
  if (
    hit &&
    hit.bundle === expected.bundle &&
    hit.peer.spiffeId === expected.spiffeId &&
    clock.now() < hit.peer.notAfter
  ) {
    return hit;
  }
  const chain = x5c.map((c) => new Uint8Array(Buffer.from(String(c), "base64")));
  let peer: VerifiedPeer;
  try {
    peer = verifyPeer(chain, new Map([[expected.bundle.trustDomain, expected.bundle]]), clock, {
      allowedIds: [expected.spiffeId],
    });
  } catch (err) {
    if (err instanceof PeerVerificationError && err.reason === "unexpected-id") {
      throw new FederationRefusal("permission-denied", `signer is not the pinned peer ${expected.spiffeId}`);
    }
    const reason = err instanceof PeerVerificationError ? err.reason : "bad-svid";
    throw new FederationRefusal(
      "unauthenticated",
      `signer's SVID does not verify against the pinned bundle (${reason})`,
      {
        cause: err,
      },
    );
  }
  const leafDer = chain[0]!;
  const signer = { peer, key: new X509Certificate(leafDer).publicKey, leafDer, chain };
  verifiedSigners.set(key, { ...signer, bundle: expected.bundle });
  return signer;
}

/**
 * Verifies a compact JWS signed by a peer kernel's SVID: its x5c chain must verify against the
 * peer's pinned bundle and carry exactly `expectedId` (the pin), its type must be `typ`, and the
 * signature must be by the leaf's key. Throws FederationRefusal.
 */
export async function verifySvidJws(
  jws: string,
  expected: { spiffeId: string; bundle: X509Bundle; typ: string },
  clock: Clock,
): Promise<VerifiedStatement> {
  let header;
  try {
    header = decodeProtectedHeader(jws);
  } catch {
    throw new FederationRefusal("invalid-argument", "signature is not a compact JWS");
  }
  if (header.typ !== expected.typ)
    throw new FederationRefusal("invalid-argument", `signature type is not ${expected.typ}`);
  if (!Array.isArray(header.x5c) || header.x5c.length === 0 || header.x5c.length > 8) {
    throw new FederationRefusal("unauthenticated", "signature carries no x5c certificate chain");
  }
  const { peer, key, leafDer, chain } = verifySigner(header.x5c, expected, clock);
  try {
    const { payload } = await compactVerify(jws, key, { algorithms: ALGORITHMS });
    return { payload, peer, leafDer, chain };
  } catch (err) {
    throw new FederationRefusal("unauthenticated", "signature does not verify with the signer's SVID key", {
      cause: err,
    });
  }
}

// Leaf (x5c[0], base64) -> the SPIFFE ID it claims ("" for none), unverified: the key to the pin to check
// against. A peer signs every delegation with the same leaf until it rotates: each leaf is parsed once.
const claimedIds = new LRUCache<string, string>({ max: 64 });

/** Reads the SPIFFE ID a JWS claims in its x5c leaf without trusting it (to find the pin to check against). */
export function claimedSigner(jws: string): string | undefined {
  let first: unknown;
  try {
    const header = decodeProtectedHeader(jws);
    first = Array.isArray(header.x5c) ? header.x5c[0] : undefined;
  } catch {
    return undefined;
  }
  if (typeof first !== "string") return undefined;
  let uri = claimedIds.get(first);
  if (uri === undefined) {
    try {
      const san = new X509Certificate(Buffer.from(first, "base64")).subjectAltName ?? "";
      uri =
        san
          .split(", ")
          .find((s) => s.startsWith("URI:spiffe://"))
          ?.slice(4) ?? "";
    } catch {
      uri = "";
    }
    claimedIds.set(first, uri);
  }
  return uri || undefined;
}
