import type { Signer, VerifierKey } from "../audit/index.js";
import { IN_TOTO_PAYLOAD_TYPE, openEnvelope, signEnvelope, type DsseEnvelope } from "./dsse.js";

/**
 * The signature of a container image (docs/release.md, "Container image"): an in-toto statement,
 * in a DSSE envelope signed with the release key, whose subject is the image's config digest (the
 * image ID). The config lists the digest of every uncompressed layer, so it fixes the whole file
 * tree, and it does not change when a registry recompresses the layers. The predicate ties the
 * image to the kernel release inside it (the digest of that release's signed attestation).
 */
export const IMAGE_PREDICATE_TYPE = "https://nops.dev/kernel/image/v1";

/** The statement an image signature carries. */
export interface ImageStatement {
  _type: "https://in-toto.io/Statement/v1";
  subject: [{ name: string; digest: { sha256: string } }];
  predicateType: typeof IMAGE_PREDICATE_TYPE;
  predicate: {
    kernelVersion: string;
    /** SHA-256 of the kernel release's attestation.dsse.json inside the image. */
    releaseAttestation: { sha256: string };
    builder: { id: string };
  };
}

/** What `release sign-image` needs. */
export interface SignImageOptions {
  /** The image's name, e.g. "registry.example/nops-kernel:0.1.0". */
  name: string;
  /** The image's config digest (image ID), "sha256:<hex>" or "<hex>". */
  configDigest: string;
  kernelVersion: string;
  /** SHA-256 (hex) of the release attestation the image's kernel carries. */
  releaseAttestationSha256: string;
  builderId: string;
  signer: Signer;
}

/** The hex of a SHA-256 digest given as "sha256:<hex>" or "<hex>"; throws naming the bad input. */
export function parseSha256Digest(text: string, what = "digest"): string {
  const hex = text.startsWith("sha256:") ? text.slice("sha256:".length) : text;
  if (!/^[0-9a-f]{64}$/.test(hex)) throw new Error(`${what} must be sha256:<64 lowercase hex digits> (got "${text}")`);
  return hex;
}

/** Signs an image by its config digest. */
export async function signImage(options: SignImageOptions): Promise<DsseEnvelope> {
  if (!options.name) throw new Error("the image needs a name");
  const statement: ImageStatement = {
    _type: "https://in-toto.io/Statement/v1",
    subject: [{ name: options.name, digest: { sha256: parseSha256Digest(options.configDigest, "image digest") } }],
    predicateType: IMAGE_PREDICATE_TYPE,
    predicate: {
      kernelVersion: options.kernelVersion,
      releaseAttestation: { sha256: parseSha256Digest(options.releaseAttestationSha256, "release attestation digest") },
      builder: { id: options.builderId },
    },
  };
  return signEnvelope(IN_TOTO_PAYLOAD_TYPE, Buffer.from(JSON.stringify(statement), "utf8"), options.signer);
}

/**
 * Verifies an image signature against the digest of the image at hand: signed by a trusted key,
 * an image statement, and its subject is exactly that digest. Throws naming what failed.
 */
export function verifyImage(
  envelope: DsseEnvelope,
  configDigest: string,
  trusted: readonly VerifierKey[],
): { statement: ImageStatement; signedBy: string } {
  const expected = parseSha256Digest(configDigest, "image digest");
  const { payload, key } = openEnvelope(envelope, trusted);
  const statement = JSON.parse(payload.toString("utf8")) as ImageStatement;
  if (statement._type !== "https://in-toto.io/Statement/v1" || statement.predicateType !== IMAGE_PREDICATE_TYPE)
    throw new Error(`not an image statement (predicate ${String(statement.predicateType)})`);
  const signed = statement.subject?.[0]?.digest?.sha256;
  if (signed !== expected)
    throw new Error(`the signature is for image sha256:${String(signed)}, not for sha256:${expected}`);
  return { statement, signedBy: key.name };
}
