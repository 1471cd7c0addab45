import { X509Certificate as NodeX509Certificate } from "node:crypto";
import { KernelError } from "../../common/index.js";
import { parseTrustDomain } from "./spiffe-id.js";
import { derToPem, splitDerCertificates } from "./x509-encoding.js";

/** A trust bundle that cannot be used; the message says why. */
export class BundleError extends KernelError {
  override name = "BundleError";
}

/** One X.509 authority of a trust bundle, parsed once so peer verification stays cheap. */
export interface X509Authority {
  /** DER encoding. */
  readonly der: Uint8Array;
  /** node:crypto view, used for issuer checks and signature verification. */
  readonly certificate: NodeX509Certificate;
  /** Validity start, ms since the epoch. */
  readonly notBefore: number;
  /** Validity end, ms since the epoch. */
  readonly notAfter: number;
}

/** The X.509 authorities of one trust domain (SPIFFE Trust Domain and Bundle §4). */
export interface X509Bundle {
  /** Trust domain name, e.g. "nops.local". */
  readonly trustDomain: string;
  /** Its authorities; never empty. */
  readonly authorities: readonly X509Authority[];
}

/** One bundle per trust domain name: the local one plus federated ones. */
export type X509BundleSet = ReadonlyMap<string, X509Bundle>;

/** Parses a DER bundle (concatenated certificates) for a trust domain. */
export function createX509Bundle(trustDomain: string, der: Uint8Array | readonly Uint8Array[]): X509Bundle {
  let td: string;
  try {
    td = parseTrustDomain(trustDomain);
  } catch (err) {
    throw new BundleError(`invalid trust domain ${JSON.stringify(trustDomain)}`, { cause: err });
  }
  let blocks: readonly Uint8Array[];
  try {
    blocks = der instanceof Uint8Array ? splitDerCertificates(der) : der;
  } catch (err) {
    throw new BundleError(`bundle of ${td} is not concatenated DER certificates`, { cause: err });
  }
  if (blocks.length === 0) throw new BundleError(`bundle of ${td} is empty`);
  const authorities = blocks.map((block, i): X509Authority => {
    let certificate: NodeX509Certificate;
    try {
      certificate = new NodeX509Certificate(block);
    } catch (err) {
      throw new BundleError(`bundle of ${td}: certificate ${i} cannot be parsed`, { cause: err });
    }
    return {
      der: block,
      certificate,
      notBefore: Date.parse(certificate.validFrom),
      notAfter: Date.parse(certificate.validTo),
    };
  });
  return { trustDomain: td, authorities };
}

/** Builds a bundle set, rejecting two bundles for one trust domain. */
export function createX509BundleSet(bundles: Iterable<X509Bundle>): X509BundleSet {
  const set = new Map<string, X509Bundle>();
  for (const bundle of bundles) {
    if (set.has(bundle.trustDomain)) throw new BundleError(`two bundles for trust domain ${bundle.trustDomain}`);
    set.set(bundle.trustDomain, bundle);
  }
  return set;
}

/**
 * The union of every authority as PEM, for node:tls `ca`. TLS stacks cannot pick the anchor by
 * the peer's trust domain, so verifyPeer enforces that rule after the handshake.
 */
export function bundleSetToPem(bundles: X509BundleSet): string {
  return derToPem(
    "CERTIFICATE",
    [...bundles.values()].flatMap((b) => b.authorities.map((a) => a.der)),
  );
}
