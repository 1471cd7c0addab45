/** The HTTP/2 client connection preface (RFC 9113 §3.4). */
export const H2_PREFACE = Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");

/** One HTTP/2 frame (RFC 9113 §4.1): 24-bit length, type, flags, stream id, payload. */
export function frame(type: number, flags: number, stream: number, payload: Buffer): Buffer {
  const header = Buffer.alloc(9);
  header.writeUIntBE(payload.length, 0, 3);
  header[3] = type;
  header[4] = flags;
  header.writeUInt32BE(stream, 5);
  return Buffer.concat([header, payload]);
}

const SETTINGS = frame(4, 0, 0, Buffer.alloc(0));
const start = (...frames: Buffer[]) => Buffer.concat([H2_PREFACE, SETTINGS, ...frames]);

/**
 * Byte sequences that each end an HTTP/2 connection with a connection error: on Node 20 nghttp2
 * answers them with GOAWAY and Node then neither emits an event nor closes the socket.
 */
export const MALFORMED_H2: Record<string, Buffer> = {
  // HEADERS (END_STREAM|END_HEADERS) whose block is an HPACK integer overflow: COMPRESSION_ERROR.
  "garbage HPACK": start(frame(1, 0x5, 1, Buffer.from([0xff, 0xff, 0xff, 0xff, 0x7f]))),
  // DATA must belong to a stream (§6.1): PROTOCOL_ERROR.
  "DATA on stream 0": start(frame(0, 0, 0, Buffer.from("abc"))),
  // Larger than SETTINGS_MAX_FRAME_SIZE (16384 by default): FRAME_SIZE_ERROR.
  "an oversize frame": start(frame(0, 0, 1, Buffer.alloc(20_000))),
  // A SETTINGS payload must be a multiple of 6 octets (§6.5): FRAME_SIZE_ERROR.
  "a truncated frame": start(frame(4, 0, 0, Buffer.alloc(5))),
  // A corrupt preface: Node emits a session error for this one.
  "a corrupt preface": Buffer.concat([H2_PREFACE, Buffer.from("XXXXXXXXXXXXXXXXXXXXXXXX")]),
};
