import { X509Certificate, type KeyObject } from "node:crypto";
import { CompactSign, compactVerify, decodeProtectedHeader } from "jose";
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
  const chain = header.x5c.map((c) => new Uint8Array(Buffer.from(String(c), "base64")));
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
  try {
    const { payload } = await compactVerify(jws, new X509Certificate(leafDer).publicKey, { algorithms: ALGORITHMS });
    return { payload, peer, leafDer, chain };
  } catch (err) {
    throw new FederationRefusal("unauthenticated", "signature does not verify with the signer's SVID key", {
      cause: err,
    });
  }
}

/** Reads the SPIFFE ID a JWS claims in its x5c leaf without trusting it (to find the pin to check against). */
export function claimedSigner(jws: string): string | undefined {
  try {
    const header = decodeProtectedHeader(jws);
    const first = Array.isArray(header.x5c) ? header.x5c[0] : undefined;
    if (typeof first !== "string") return undefined;
    const san = new X509Certificate(Buffer.from(first, "base64")).subjectAltName ?? "";
    const uri = san
      .split(", ")
      .find((s) => s.startsWith("URI:spiffe://"))
      ?.slice(4);
    return uri;
  } catch {
    return undefined;
  }
}
