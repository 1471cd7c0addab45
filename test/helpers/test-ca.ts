import "reflect-metadata";
import { randomBytes, webcrypto } from "node:crypto";
import {
  AuthorityKeyIdentifierExtension,
  BasicConstraintsExtension,
  ExtendedKeyUsage,
  ExtendedKeyUsageExtension,
  KeyUsageFlags,
  KeyUsagesExtension,
  SubjectAlternativeNameExtension,
  SubjectKeyIdentifierExtension,
  X509CertificateGenerator,
  X509Certificate,
  Extension as X509Extension,
  type Extension,
  type JsonGeneralName,
} from "@peculiar/x509";

/** Key usage flags for IssueOptions.keyUsage (re-exported so tests load @peculiar/x509 after the Reflect shim). */
export { KeyUsageFlags, ExtendedKeyUsage };

const ALG = { name: "ECDSA", namedCurve: "P-256", hash: "SHA-256" } as const;
const HOUR = 3600_000;

/** Certificates and key of a minted test SVID (or bad certificate). */
export interface TestSvid {
  /** Concatenated DER chain, leaf first (the Workload API's x509_svid). */
  chainDer: Uint8Array;
  /** The same chain, one DER per certificate. */
  certificates: Uint8Array[];
  /** PKCS#8 DER key (the Workload API's x509_svid_key). */
  keyDer: Uint8Array;
  /** PEM chain and PEM key, for node:tls. */
  certPem: string;
  keyPem: string;
}

/** Options for a test leaf; every knob exists to mint a specific bad certificate. */
export interface IssueOptions {
  /** SPIFFE ID placed as the only URI SAN (ignored when `uris` is given). */
  spiffeId?: string;
  /** Exact URI SANs (e.g. two to test the one-URI rule). */
  uris?: string[];
  dnsNames?: string[];
  ipAddresses?: string[];
  /** Mark the leaf as a CA. @default false */
  ca?: boolean;
  /** Key usage flags, or null for no extension. @default digitalSignature */
  keyUsage?: number | null;
  /** @default true */
  keyUsageCritical?: boolean;
  /** Extended key usages (OIDs), or null for no extension. @default [serverAuth, clientAuth] */
  extKeyUsages?: string[] | null;
  /** Extensions added as they are (e.g. an unknown critical one). @default [] */
  extraExtensions?: Extension[];
  /** @default now - 1h */
  notBefore?: Date;
  /** @default now + 1h */
  notAfter?: Date;
}

/** A test certificate authority for one trust domain. */
export interface TestCa {
  trustDomain: string;
  /** DER of the CA certificate (the bundle for its trust domain). */
  certDer: Uint8Array;
  certPem: string;
  /** Intermediates between this CA and its root, leaf-side first (empty for a root). */
  chainAbove: Uint8Array[];
  /** Issues a leaf SVID signed by this CA (chain includes intermediates). */
  issue(options?: IssueOptions): Promise<TestSvid>;
  /** Issues an intermediate CA signed by this CA. */
  intermediate(options?: CaOptions): Promise<TestCa>;
}

/** Options for a test CA (root or intermediate). */
export interface CaOptions {
  notBefore?: Date;
  notAfter?: Date;
  /** basicConstraints pathLenConstraint. @default none */
  pathLength?: number;
  /** Extended key usages (OIDs) of an intermediate. @default no extension */
  extKeyUsages?: string[];
  /** Extensions added as they are (e.g. an unknown critical one). @default [] */
  extraExtensions?: Extension[];
}

/** An extension with an OID no verifier knows (a private arc), holding an ASN.1 NULL. */
export function unknownExtension(critical: boolean): Extension {
  return new X509Extension("1.3.6.1.4.1.55555.1.1", critical, new Uint8Array([0x05, 0x00]));
}

function pem(label: string, der: Uint8Array): string {
  const b64 =
    Buffer.from(der)
      .toString("base64")
      .match(/.{1,64}/g) ?? [];
  return `-----BEGIN ${label}-----\n${b64.join("\n")}\n-----END ${label}-----\n`;
}

function serial(): string {
  const b = randomBytes(12);
  b[0] = (b[0] ?? 0) & 0x7f;
  return b.toString("hex");
}

function buildCa(
  trustDomain: string,
  cert: X509Certificate,
  key: webcrypto.CryptoKey,
  chainAbove: Uint8Array[],
): TestCa {
  const certDer = new Uint8Array(cert.rawData);
  const now = Date.now();
  const sign = async (
    publicKey: webcrypto.CryptoKey,
    subject: string,
    extensions: Extension[],
    notBefore: Date,
    notAfter: Date,
  ) =>
    X509CertificateGenerator.create(
      {
        serialNumber: serial(),
        subject,
        issuer: cert.subject,
        notBefore,
        notAfter,
        publicKey,
        signingKey: key,
        signingAlgorithm: ALG,
        extensions: [...extensions, await AuthorityKeyIdentifierExtension.create(cert, false, webcrypto)],
      },
      webcrypto,
    );
  return {
    trustDomain,
    certDer,
    certPem: pem("CERTIFICATE", certDer),
    chainAbove,
    async issue(o = {}) {
      const keys = await webcrypto.subtle.generateKey(ALG, true, ["sign", "verify"]);
      const names: JsonGeneralName[] = [
        ...(o.uris ?? [o.spiffeId ?? `spiffe://${trustDomain}/test/workload`]).map(
          (value): JsonGeneralName => ({ type: "url", value }),
        ),
        ...(o.dnsNames ?? []).map((value): JsonGeneralName => ({ type: "dns", value })),
        ...(o.ipAddresses ?? []).map((value): JsonGeneralName => ({ type: "ip", value })),
      ];
      const extensions: Extension[] = [
        new BasicConstraintsExtension(o.ca ?? false, undefined, true),
        new SubjectAlternativeNameExtension(names),
        ...(o.extraExtensions ?? []),
      ];
      const eku =
        o.extKeyUsages === undefined ? [ExtendedKeyUsage.serverAuth, ExtendedKeyUsage.clientAuth] : o.extKeyUsages;
      if (eku !== null) extensions.push(new ExtendedKeyUsageExtension(eku));
      const ku = o.keyUsage === undefined ? KeyUsageFlags.digitalSignature : o.keyUsage;
      if (ku !== null) extensions.push(new KeyUsagesExtension(ku, o.keyUsageCritical ?? true));
      const leaf = await sign(
        keys.publicKey,
        "O=test workload",
        extensions,
        o.notBefore ?? new Date(now - HOUR),
        o.notAfter ?? new Date(now + HOUR),
      );
      const leafDer = new Uint8Array(leaf.rawData);
      // A root's leaves carry no intermediates; an intermediate's carry it and those above, not the root.
      const certificates = chainAbove.length === 0 ? [leafDer] : [leafDer, certDer, ...chainAbove.slice(0, -1)];
      const keyDer = new Uint8Array(await webcrypto.subtle.exportKey("pkcs8", keys.privateKey));
      return {
        chainDer: new Uint8Array(Buffer.concat(certificates)),
        certificates,
        keyDer,
        certPem: certificates.map((c) => pem("CERTIFICATE", c)).join(""),
        keyPem: pem("PRIVATE KEY", keyDer),
      };
    },
    async intermediate(o = {}) {
      const keys = await webcrypto.subtle.generateKey(ALG, true, ["sign", "verify"]);
      const inter = await sign(
        keys.publicKey,
        `CN=intermediate ${serial()}, O=${trustDomain}`,
        [
          new BasicConstraintsExtension(true, o.pathLength, true),
          new KeyUsagesExtension(KeyUsageFlags.keyCertSign | KeyUsageFlags.cRLSign, true),
          await SubjectKeyIdentifierExtension.create(keys.publicKey, false, webcrypto),
          ...(o.extKeyUsages ? [new ExtendedKeyUsageExtension(o.extKeyUsages)] : []),
          ...(o.extraExtensions ?? []),
        ],
        o.notBefore ?? new Date(now - HOUR),
        o.notAfter ?? new Date(now + 24 * HOUR),
      );
      return buildCa(trustDomain, inter, keys.privateKey, [certDer, ...chainAbove]);
    },
  };
}

/** Creates a self-signed root CA for `trustDomain` valid around the real current time. */
export async function createTestCa(trustDomain: string, o: CaOptions = {}): Promise<TestCa> {
  const keys = await webcrypto.subtle.generateKey(ALG, true, ["sign", "verify"]);
  const now = Date.now();
  const cert = await X509CertificateGenerator.createSelfSigned(
    {
      serialNumber: serial(),
      name: `CN=test root ${serial()}, O=${trustDomain}`,
      notBefore: o.notBefore ?? new Date(now - 2 * HOUR),
      notAfter: o.notAfter ?? new Date(now + 48 * HOUR),
      keys,
      signingAlgorithm: ALG,
      extensions: [
        new BasicConstraintsExtension(true, o.pathLength, true),
        new KeyUsagesExtension(KeyUsageFlags.keyCertSign | KeyUsageFlags.cRLSign, true),
        new SubjectAlternativeNameExtension([{ type: "url", value: `spiffe://${trustDomain}` }]),
        await SubjectKeyIdentifierExtension.create(keys.publicKey, false, webcrypto),
        ...(o.extraExtensions ?? []),
      ],
    },
    webcrypto,
  );
  return buildCa(trustDomain, cert, keys.privateKey, []);
}

/** A TestCa over an existing CA certificate and PKCS#8 key, both PEM (e.g. a kernel's dev issuer CA). */
export async function loadTestCa(trustDomain: string, certPem: string, keyPem: string): Promise<TestCa> {
  const der = (pemText: string, label: string) => {
    const b64 = new RegExp(`-----BEGIN ${label}-----([^-]+)-----END ${label}-----`).exec(pemText)?.[1];
    if (!b64) throw new Error(`no ${label} block`);
    return Buffer.from(b64.replace(/\s+/g, ""), "base64");
  };
  const key = await webcrypto.subtle.importKey("pkcs8", der(keyPem, "PRIVATE KEY"), ALG, true, ["sign"]);
  return buildCa(trustDomain, new X509Certificate(der(certPem, "CERTIFICATE")), key, []);
}
