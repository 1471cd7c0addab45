import { KernelError } from "../../common/index.js";

/** Bytes that are not a sequence of DER-encoded certificates. */
export class DerEncodingError extends KernelError {
  override name = "DerEncodingError";
}

// Bounds the work a hostile Workload API message or peer chain can cause.
const MAX_CERTIFICATES = 64;
const SEQUENCE_TAG = 0x30;

/**
 * Splits concatenated DER certificates (the Workload API's `x509_svid` and `bundle` fields,
 * SPIFFE Workload API §5.1) into one Uint8Array per certificate, without parsing them.
 */
export function splitDerCertificates(bytes: Uint8Array): Uint8Array[] {
  const out: Uint8Array[] = [];
  let offset = 0;
  while (offset < bytes.length) {
    if (out.length >= MAX_CERTIFICATES) throw new DerEncodingError(`more than ${MAX_CERTIFICATES} certificates`);
    if (bytes[offset] !== SEQUENCE_TAG) throw new DerEncodingError(`expected a DER SEQUENCE at byte ${offset}`);
    const first = bytes[offset + 1];
    if (first === undefined) throw new DerEncodingError("truncated DER length");
    let length: number;
    let header: number;
    if (first < 0x80) {
      length = first;
      header = 2;
    } else {
      // X.690 §8.1.3.5: long form; DER forbids the indefinite form (0x80).
      const count = first & 0x7f;
      if (count === 0 || count > 4) throw new DerEncodingError(`unsupported DER length at byte ${offset}`);
      length = 0;
      for (let i = 0; i < count; i++) {
        const b = bytes[offset + 2 + i];
        if (b === undefined) throw new DerEncodingError("truncated DER length");
        length = length * 256 + b;
      }
      header = 2 + count;
    }
    const end = offset + header + length;
    if (end > bytes.length) throw new DerEncodingError("truncated DER certificate");
    out.push(bytes.subarray(offset, end));
    offset = end;
  }
  return out;
}

/** PEM-encodes DER blocks under one label (RFC 7468), e.g. certificates for node:tls `cert`/`ca`. */
export function derToPem(label: string, blocks: readonly Uint8Array[]): string {
  return blocks
    .map((der) => {
      const b64 = Buffer.from(der.buffer, der.byteOffset, der.byteLength).toString("base64");
      const lines = b64.match(/.{1,64}/g) ?? [];
      return `-----BEGIN ${label}-----\n${lines.join("\n")}\n-----END ${label}-----\n`;
    })
    .join("");
}

/** Decodes every PEM block with the given label (RFC 7468) into DER. */
export function pemToDer(label: string, pem: string): Uint8Array[] {
  const re = new RegExp(`-----BEGIN ${label}-----([A-Za-z0-9+/=\\s]+)-----END ${label}-----`, "g");
  return [...pem.matchAll(re)].map((m) => new Uint8Array(Buffer.from((m[1] ?? "").replace(/\s+/g, ""), "base64")));
}
