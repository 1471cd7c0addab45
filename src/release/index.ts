/**
 * Signed releases: the manifest of every file the kernel runs, the CycloneDX SBOM and an in-toto
 * statement with SLSA provenance in a DSSE envelope (`nops-kernel release sign|verify`), and the
 * check at boot that refuses a kernel whose files or signature do not match (docs/release.md).
 */
export { checkReleaseAtBoot } from "./boot-check.js";
export {
  BUNDLE_FILES,
  type CreateBundleOptions,
  applyRotations,
  createBundle,
  installBundle,
  signKeyRotation,
  verifyBundle,
} from "./bundle.js";
export { type DsseEnvelope, IN_TOTO_PAYLOAD_TYPE, openEnvelope, pae, signEnvelope } from "./dsse.js";
export {
  type ImageStatement,
  type SignImageOptions,
  IMAGE_PREDICATE_TYPE,
  parseSha256Digest,
  signImage,
  verifyImage,
} from "./image.js";
export {
  type InTotoStatement,
  type ReleaseVerification,
  type SignReleaseOptions,
  BUILD_TYPE,
  RELEASE_FILES,
  signRelease,
  verifyRelease,
} from "./release.js";
export {
  type ReleaseManifest,
  buildManifest,
  checkManifest,
  parseManifest,
  releaseRoots,
  sha256Hex,
} from "./release-manifest.js";
export { type ReleaseOptions, DEFAULT_RELEASE_OPTIONS, kernelRoot, resolveReleaseOptions } from "./release-options.js";
