import { encodeVerifierKey, verifyEd25519, type Signer, type VerifierKey } from "../audit/index.js";

/** A DSSE envelope (Dead Simple Signing Envelope, as in-toto attestations are wrapped). */
export interface DsseEnvelope {
  payloadType: string;
  /** base64 of the payload bytes. */
  payload: string;
  signatures: Array<{ keyid: string; sig: string }>;
}

/** The in-toto statement media type. */
export const IN_TOTO_PAYLOAD_TYPE = "application/vnd.in-toto+json";

/** DSSE's pre-authentication encoding: what is signed, binding the type to the body. */
export function pae(payloadType: string, payload: Uint8Array): Buffer {
  const type = Buffer.from(payloadType, "utf8");
  return Buffer.concat([
    Buffer.from(`DSSEv1 ${type.length} `),
    type,
    Buffer.from(` ${payload.length} `),
    Buffer.from(payload),
  ]);
}

/** Signs `payload` into an envelope; the key id is the signer's verifier key text. */
export async function signEnvelope(payloadType: string, payload: Uint8Array, signer: Signer): Promise<DsseEnvelope> {
  const sig = await signer.sign(pae(payloadType, payload));
  return {
    payloadType,
    payload: Buffer.from(payload).toString("base64"),
    signatures: [{ keyid: encodeVerifierKey(signer.name, signer.publicKey), sig: Buffer.from(sig).toString("base64") }],
  };
}

/**
 * Opens an envelope signed by one of `trusted`: returns the payload and the key that signed it,
 * or throws naming why not (unknown key, bad signature, malformed envelope).
 */
export function openEnvelope(
  envelope: DsseEnvelope,
  trusted: readonly VerifierKey[],
): { payload: Buffer; key: VerifierKey } {
  if (typeof envelope.payloadType !== "string" || typeof envelope.payload !== "string")
    throw new Error("envelope must have a payloadType and a base64 payload");
  if (!Array.isArray(envelope.signatures) || envelope.signatures.length === 0)
    throw new Error("envelope carries no signature");
  const payload = Buffer.from(envelope.payload, "base64");
  const message = pae(envelope.payloadType, payload);
  const unknown: string[] = [];
  for (const s of envelope.signatures) {
    const key = trusted.find((k) => encodeVerifierKey(k.name, k.publicKey) === s.keyid);
    if (!key) {
      unknown.push(s.keyid);
      continue;
    }
    if (!verifyEd25519(key.publicKey, message, Buffer.from(s.sig, "base64")))
      throw new Error(`signature by ${key.name} does not verify: the release was altered or signed by another key`);
    return { payload, key };
  }
  throw new Error(`signed by a key this kernel does not trust: ${unknown.join(", ")}`);
}
