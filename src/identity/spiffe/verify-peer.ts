import { X509Certificate as NodeX509Certificate } from "node:crypto";
import { type Clock, KernelError } from "../../common/index.js";
import { MAX_PEER_CHAIN_LENGTH } from "../../server/index.js";
import type { X509BundleSet } from "./x509-bundle.js";
import {
  ChainExtensionError,
  checkChainExtensions,
  isSigningCertificate,
  parseCertificate,
  SvidError,
  validateSvidLeaf,
  type X509Certificate,
} from "./x509-svid.js";

/** Why a peer's X509-SVID was rejected. */
export type PeerRejectReason =
  | "bad-svid"
  | "unknown-trust-domain"
  | "expired"
  | "not-yet-valid"
  | "untrusted"
  | "unexpected-id";

/** A peer chain that does not authenticate; `reason` is safe to log and to count. */
export class PeerVerificationError extends KernelError {
  override name = "PeerVerificationError";
  constructor(
    readonly reason: PeerRejectReason,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

/** The authenticated identity of a peer. */
export interface VerifiedPeer {
  /** The peer's SPIFFE ID, e.g. "spiffe://nops.local/nops/admin/developer". */
  spiffeId: string;
  /** Its trust domain name. */
  trustDomain: string;
  /** Its path ("/nops/admin/developer"). */
  path: string;
  /** Leaf expiry, ms since the epoch (caches keyed on the connection must not outlive it). */
  notAfter: number;
}

/** Options of verifyPeer. */
export interface VerifyPeerOptions {
  /** Accept only these SPIFFE IDs (e.g. the expected server of an outbound call). @default any */
  allowedIds?: readonly string[];
  /**
   * What the peer is: a "client" calling in (extended key usage must allow clientAuth) or the
   * "server" of an outbound call (serverAuth). @default "client"
   */
  role?: "client" | "server";
}

function checkValidity(cert: NodeX509Certificate, label: string, now: number): void {
  if (Date.parse(cert.validFrom) > now) throw new PeerVerificationError("not-yet-valid", `${label} is not yet valid`);
  if (Date.parse(cert.validTo) < now) throw new PeerVerificationError("expired", `${label} expired at ${cert.validTo}`);
}

function issues(issuer: NodeX509Certificate, subject: NodeX509Certificate): boolean {
  try {
    return subject.checkIssued(issuer) && subject.verify(issuer.publicKey);
  } catch {
    return false;
  }
}

/**
 * Verifies a peer's X509-SVID chain (DER, leaf first) against the bundle of the peer's OWN trust
 * domain (X509-SVID §5.2: the anchor is chosen by the SPIFFE ID's trust domain, federated bundles
 * included), checking validity periods with `clock`. Throws PeerVerificationError.
 */
export function verifyPeer(
  chainDer: readonly Uint8Array[],
  bundles: X509BundleSet,
  clock: Clock,
  options: VerifyPeerOptions = {},
): VerifiedPeer {
  const leafDer = chainDer[0];
  if (!leafDer) throw new PeerVerificationError("bad-svid", "peer presented no certificate");
  if (chainDer.length > MAX_PEER_CHAIN_LENGTH) {
    throw new PeerVerificationError("bad-svid", `peer chain longer than ${MAX_PEER_CHAIN_LENGTH} certificates`);
  }
  let id;
  let chain: NodeX509Certificate[];
  let parsed: X509Certificate[];
  try {
    parsed = chainDer.map((der, i) => parseCertificate(der, i === 0 ? "peer leaf" : `peer certificate ${i}`));
    id = validateSvidLeaf(parsed[0] as X509Certificate);
    chain = chainDer.map((der) => new NodeX509Certificate(der));
  } catch (err) {
    const message = err instanceof SvidError ? err.message : "peer chain cannot be parsed";
    throw new PeerVerificationError("bad-svid", message, { cause: err });
  }
  if (options.allowedIds && !options.allowedIds.includes(id.id)) {
    throw new PeerVerificationError("unexpected-id", `peer ${id.id} is not one of the expected identities`);
  }
  const bundle = bundles.get(id.trustDomain);
  if (!bundle) throw new PeerVerificationError("unknown-trust-domain", `no bundle for trust domain ${id.trustDomain}`);

  const now = clock.now();
  let current = chain[0] as NodeX509Certificate;
  checkValidity(current, "peer leaf", now);
  // The path as built, leaf first: its extensions are checked like OpenSSL's chain checks, so the
  // HTTP port (whose TLS admits callers without a certificate) refuses what the gRPC port's handshake
  // refuses, and the gRPC port accepts what the HTTP port accepts (issue 13 item 16).
  const path: X509Certificate[] = [parsed[0] as X509Certificate];
  const used = new Set<number>([0]);
  const purpose = options.role ?? "client";
  const checkPath = (anchor: X509Certificate | undefined) => {
    try {
      checkChainExtensions(path, anchor, purpose);
    } catch (err) {
      if (!(err instanceof ChainExtensionError)) throw err;
      throw new PeerVerificationError(err.leaf ? "bad-svid" : "untrusted", err.message, { cause: err });
    }
  };
  for (let depth = 0; depth < MAX_PEER_CHAIN_LENGTH; depth++) {
    const anchor = bundle.authorities.find((a) => issues(a.certificate, current));
    if (anchor) {
      checkValidity(anchor.certificate, `trust anchor of ${id.trustDomain}`, now);
      checkPath(parseCertificate(new Uint8Array(anchor.certificate.raw), `trust anchor of ${id.trustDomain}`));
      return { spiffeId: id.id, trustDomain: id.trustDomain, path: id.path, notAfter: Date.parse(chain[0]!.validTo) };
    }
    const next = chain.findIndex((c, i) => !used.has(i) && issues(c, current) && isSigningCertificate(parsed[i]!));
    if (next === -1) break;
    used.add(next);
    current = chain[next] as NodeX509Certificate;
    path.push(parsed[next] as X509Certificate);
    checkValidity(current, `intermediate ${next}`, now);
  }
  throw new PeerVerificationError("untrusted", `peer chain does not lead to the bundle of ${id.trustDomain}`);
}
