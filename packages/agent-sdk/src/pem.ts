/** Splits concatenated DER certificates (the Workload API's `x509_svid` and `bundle` fields). */
export function splitDer(der: Uint8Array): Uint8Array[] {
  const out: Uint8Array[] = [];
  let i = 0;
  while (i < der.length) {
    // Each certificate is one DER SEQUENCE: tag 0x30, then a short or long-form length.
    if (der[i] !== 0x30) throw new Error(`not a DER SEQUENCE at offset ${i}`);
    const first = der[i + 1] ?? 0;
    let len = 0;
    let header = 2;
    if (first < 0x80) len = first;
    else {
      const n = first & 0x7f;
      if (n === 0 || n > 4) throw new Error(`unsupported DER length at offset ${i}`);
      for (let k = 0; k < n; k++) len = len * 256 + (der[i + 2 + k] ?? 0);
      header += n;
    }
    const end = i + header + len;
    if (end > der.length) throw new Error("truncated DER");
    out.push(der.subarray(i, end));
    i = end;
  }
  return out;
}

/** PEM-encodes DER blocks with the given label. */
export function toPem(label: string, blocks: readonly Uint8Array[]): string {
  return blocks
    .map((b) => {
      const body = Buffer.from(b)
        .toString("base64")
        .replace(/.{1,64}/g, "$&\n");
      return `-----BEGIN ${label}-----\n${body}-----END ${label}-----\n`;
    })
    .join("");
}

/** Decodes every PEM block with the given label. */
export function fromPem(label: string, pem: string): Uint8Array[] {
  const re = new RegExp(`-----BEGIN ${label}-----([\\s\\S]*?)-----END ${label}-----`, "g");
  return [...pem.matchAll(re)].map((m) => new Uint8Array(Buffer.from((m[1] ?? "").replace(/\s+/g, ""), "base64")));
}
