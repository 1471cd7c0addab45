import { configureTextEncoding, getTextEncoding } from "@bufbuild/protobuf/wire";

/**
 * Makes protobuf-es encode strings with `Buffer.from` instead of `TextEncoder`, for every message
 * the process encodes from then on (the setting is process-wide, read by each new writer).
 * Node's `TextEncoder.encode` allocates a new ArrayBuffer per call: about 0.6 µs for a short
 * string against 0.08 µs for `Buffer.from`, which slices Node's buffer pool. The bytes are the
 * same, a lone surrogate included (U+FFFD in both). A router-to-agent HandleRequest of 136 bytes
 * encodes in 5.3 µs instead of 14.5 µs.
 */
export function useBufferUtf8Encoding(): void {
  configureTextEncoding({ ...getTextEncoding(), encodeUtf8: (text) => Buffer.from(text, "utf8") });
}
