// @peculiar/x509 loads tsyringe, which needs a Reflect metadata polyfill at import time.
import "reflect-metadata";
import { X509Certificate as NodeX509Certificate, createPrivateKey, createPublicKey, type KeyObject } from "node:crypto";
import {
  BasicConstraintsExtension,
  ExtendedKeyUsage,
  ExtendedKeyUsageExtension,
  KeyUsageFlags,
  KeyUsagesExtension,
  SubjectAlternativeNameExtension,
  X509Certificate,
} from "@peculiar/x509";
import { KernelError } from "../../common/index.js";
import { parseSpiffeId, type SpiffeId } from "./spiffe-id.js";
import { derToPem, splitDerCertificates } from "./x509-encoding.js";

/** A certificate or key that is not a valid X509-SVID; the message says which rule failed. */
export class SvidError extends KernelError {
  override name = "SvidError";
}

/** A certificate of a peer's path breaks a chain rule; `leaf` says whether it is the SVID itself. */
export class ChainExtensionError extends SvidError {
  override name = "ChainExtensionError";
  constructor(
    message: string,
    readonly leaf: boolean,
  ) {
    super(message);
  }
}

export type { X509Certificate };

/**
 * Extensions a certificate may mark critical. It is OpenSSL's list of handled extensions
 * (X509_supported_extension) less those the kernel does not evaluate: name constraints, policy
 * constraints and mappings, inhibitAnyPolicy, proxy and RFC 3779 extensions. A critical one of
 * those refuses the chain here, which is stricter than OpenSSL, never laxer, so both ports (the
 * gRPC port runs OpenSSL's checks and this one, the HTTP port this one only) refuse alike.
 */
const HANDLED_CRITICAL_EXTENSIONS: ReadonlySet<string> = new Set([
  "2.5.29.15", // keyUsage
  "2.5.29.17", // subjectAltName
  "2.5.29.19", // basicConstraints
  "2.5.29.31", // cRLDistributionPoints
  "2.5.29.32", // certificatePolicies (any policy is accepted, as OpenSSL does without explicit-policy flags)
  "2.5.29.37", // extKeyUsage
]);

const PURPOSE_EKU = { client: ExtendedKeyUsage.clientAuth, server: ExtendedKeyUsage.serverAuth } as const;

/**
 * The chain checks OpenSSL makes during a handshake (x509_vfy.c check_chain_extensions), for a
 * path built leaf first up to (not including) `anchor`: no unhandled critical extension on any
 * certificate, the extended key usage of the leaf and intermediates (when present) allows
 * `purpose` (anyExtendedKeyUsage does not, as in OpenSSL), and no CA's pathLenConstraint is
 * exceeded (RFC 5280 §4.2.1.9), the anchor's included. Throws ChainExtensionError.
 */
export function checkChainExtensions(
  path: readonly X509Certificate[],
  anchor: X509Certificate | undefined,
  purpose: "client" | "server",
): void {
  const all = anchor ? [...path, anchor] : [...path];
  all.forEach((cert, i) => {
    const leaf = i === 0;
    const what = leaf ? "leaf" : i === path.length ? "trust anchor" : `intermediate ${i}`;
    for (const ext of cert.extensions) {
      if (ext.critical && !HANDLED_CRITICAL_EXTENSIONS.has(ext.type))
        throw new ChainExtensionError(`${what} has an unknown critical extension ${ext.type}`, leaf);
    }
    if (i < path.length) {
      const eku = cert.getExtension(ExtendedKeyUsageExtension);
      if (eku && !eku.usages.includes(PURPOSE_EKU[purpose]))
        throw new ChainExtensionError(`${what} extended key usage does not allow ${purpose}Auth`, leaf);
    }
    if (!leaf) {
      const pathLength = cert.getExtension(BasicConstraintsExtension)?.pathLength;
      // Intermediates between this CA and the leaf (none is self-issued in an SVID path).
      if (pathLength !== undefined && i - 1 > pathLength)
        throw new ChainExtensionError(
          `${what} allows ${pathLength} intermediates below it, the path has ${i - 1}`,
          false,
        );
    }
  });
}

/** A parsed and validated X509-SVID with its private key. */
export interface X509Svid {
  /** The SPIFFE ID in the leaf's URI SAN. */
  readonly spiffeId: SpiffeId;
  /** DER certificates, leaf first, then intermediates. */
  readonly certificates: readonly Uint8Array[];
  /** The leaf's private key. */
  readonly privateKey: KeyObject;
  /** Leaf validity start, ms since the epoch. */
  readonly notBefore: number;
  /** Leaf validity end, ms since the epoch. */
  readonly notAfter: number;
  /** The Workload API `hint` ("" when none). */
  readonly hint: string;
  /** The chain as PEM, for node:tls `cert`. */
  readonly certificatePem: string;
  /** The key as PKCS#8 PEM, for node:tls `key`. */
  readonly privateKeyPem: string;
}

/** Input of parseX509Svid: the Workload API's X509SVID fields. */
export interface X509SvidInput {
  /** Concatenated DER certificates, leaf first (`x509_svid`). */
  chain: Uint8Array;
  /** Unencrypted PKCS#8 DER private key (`x509_svid_key`). */
  key: Uint8Array;
  /** The SPIFFE ID the message claims (`spiffe_id`); must match the leaf when given. */
  spiffeId?: string;
  /** The Workload API `hint`. */
  hint?: string;
}

/** Parses one DER certificate with @peculiar/x509, wrapping parse failures in SvidError. */
export function parseCertificate(der: Uint8Array, what: string): X509Certificate {
  try {
    return new X509Certificate(der);
  } catch (err) {
    throw new SvidError(`${what} is not a valid DER certificate`, { cause: err });
  }
}

/**
 * Checks the X509-SVID rules for a leaf and returns its SPIFFE ID: exactly one URI SAN holding a
 * valid SPIFFE ID (X509-SVID §2), not a CA (§4.1), key usage present and critical with
 * digitalSignature and without keyCertSign/cRLSign (§4.3).
 */
export function validateSvidLeaf(cert: X509Certificate): SpiffeId {
  let uris: string[];
  try {
    const san = cert.getExtension(SubjectAlternativeNameExtension);
    uris = san ? san.names.items.filter((n) => n.type === "url").map((n) => n.value) : [];
  } catch (err) {
    throw new SvidError("leaf subjectAltName cannot be parsed", { cause: err });
  }
  if (uris.length !== 1) throw new SvidError(`leaf must have exactly one URI SAN, found ${uris.length}`);
  let id: SpiffeId;
  try {
    id = parseSpiffeId(uris[0] ?? "");
  } catch (err) {
    throw new SvidError(`leaf URI SAN is not a valid SPIFFE ID`, { cause: err });
  }
  // A trust-domain-only ID names no workload, so it cannot be a leaf's identity (SPIFFE-ID §2.2).
  if (id.path === "") throw new SvidError(`leaf SPIFFE ID ${id.id} has no path`);
  const bc = cert.getExtension(BasicConstraintsExtension);
  if (bc?.ca) throw new SvidError("leaf is a CA certificate (X509-SVID §4.1)");
  const ku = cert.getExtension(KeyUsagesExtension);
  if (!ku) throw new SvidError("leaf has no key usage extension (X509-SVID §4.3)");
  if (!ku.critical) throw new SvidError("leaf key usage is not critical (X509-SVID §4.3)");
  if ((ku.usages & KeyUsageFlags.digitalSignature) === 0) {
    throw new SvidError("leaf key usage lacks digitalSignature (X509-SVID §4.3)");
  }
  if ((ku.usages & (KeyUsageFlags.keyCertSign | KeyUsageFlags.cRLSign)) !== 0) {
    throw new SvidError("leaf key usage has keyCertSign or cRLSign (X509-SVID §4.3)");
  }
  return id;
}

/** True when the certificate may sign others: CA basic constraint and, if present, keyCertSign (X509-SVID §4.1/4.3). */
export function isSigningCertificate(cert: X509Certificate): boolean {
  const bc = cert.getExtension(BasicConstraintsExtension);
  if (!bc?.ca) return false;
  const ku = cert.getExtension(KeyUsagesExtension);
  return !ku || (ku.usages & KeyUsageFlags.keyCertSign) !== 0;
}

/** Parses and validates an X509-SVID (chain + PKCS#8 key) per the X509-SVID standard. */
export function parseX509Svid(input: X509SvidInput): X509Svid {
  let ders: Uint8Array[];
  try {
    ders = splitDerCertificates(input.chain);
  } catch (err) {
    throw new SvidError("x509_svid is not concatenated DER certificates", { cause: err });
  }
  const leafDer = ders[0];
  if (!leafDer) throw new SvidError("x509_svid holds no certificate");
  const leaf = parseCertificate(leafDer, "leaf");
  const spiffeId = validateSvidLeaf(leaf);
  if (input.spiffeId !== undefined && input.spiffeId !== spiffeId.id) {
    throw new SvidError(`spiffe_id ${JSON.stringify(input.spiffeId)} does not match the leaf's ${spiffeId.id}`);
  }
  for (const [i, der] of ders.entries()) {
    if (i === 0) continue;
    if (!isSigningCertificate(parseCertificate(der, `intermediate ${i}`))) {
      throw new SvidError(`intermediate ${i} is not a signing certificate (X509-SVID §4.1)`);
    }
  }
  let privateKey: KeyObject;
  try {
    privateKey = createPrivateKey({ key: Buffer.from(input.key), format: "der", type: "pkcs8" });
  } catch (err) {
    throw new SvidError("x509_svid_key is not an unencrypted PKCS#8 DER key", { cause: err });
  }
  const keySpki = createPublicKey(privateKey).export({ type: "spki", format: "der" });
  const leafSpki = new NodeX509Certificate(leafDer).publicKey.export({ type: "spki", format: "der" });
  if (!keySpki.equals(leafSpki)) throw new SvidError("x509_svid_key does not match the leaf certificate");
  return {
    spiffeId,
    certificates: ders,
    privateKey,
    notBefore: leaf.notBefore.getTime(),
    notAfter: leaf.notAfter.getTime(),
    hint: input.hint ?? "",
    certificatePem: derToPem("CERTIFICATE", ders),
    privateKeyPem: privateKey.export({ type: "pkcs8", format: "pem" }).toString(),
  };
}
