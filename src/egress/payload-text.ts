/** Turns an outbound payload into the text the classifier reads. */
export function payloadText(payload: unknown): string {
  if (payload === undefined || payload === null) return "";
  if (typeof payload === "string") return payload;
  if (payload instanceof Uint8Array) return bytesText(payload);
  // The replacer reads the holder's original value: JSON.stringify applies Buffer#toJSON before
  // the replacer sees it, which would turn a Buffer-backed bytes field (as grpc-js decoding
  // yields) into a list of numbers the classifier cannot read.
  return JSON.stringify(payload, function (this: Record<string, unknown>, key: string, v: unknown) {
    const original = this[key];
    if (original instanceof Uint8Array) return bytesText(original);
    return typeof v === "bigint" ? v.toString() : v;
  });
}

const decoder = new TextDecoder("utf-8", { fatal: true });

/**
 * Text of a byte payload: UTF-8 as is (JSON, text); otherwise the strings inside it read as
 * protobuf wire format (events, gRPC messages), so a length prefix never glues onto a value.
 */
export function bytesText(bytes: Uint8Array): string {
  try {
    return decoder.decode(bytes);
  } catch {
    const out: string[] = [];
    if (!walkProto(bytes, out, 0)) return printableRuns(bytes);
    return out.join(" ");
  }
}

function printableRuns(bytes: Uint8Array): string {
  // Control characters (below U+0020 except tab/newline/CR, and DEL) and U+FFFD become spaces.
  let out = "";
  for (const ch of new TextDecoder().decode(bytes)) {
    const c = ch.codePointAt(0) ?? 0;
    out += (c < 0x20 && c !== 9 && c !== 10 && c !== 13) || c === 0x7f || c === 0xfffd ? " " : ch;
  }
  return out;
}

function readVarint(b: Uint8Array, pos: number): [number, number] | undefined {
  let v = 0;
  let mul = 1;
  for (let i = pos; i < b.length && i < pos + 10; i++) {
    const byte = b[i] ?? 0;
    v += (byte & 0x7f) * mul;
    mul *= 128;
    if ((byte & 0x80) === 0) return [v, i + 1];
  }
  return undefined;
}

// Walks protobuf wire format; every length-delimited field is emitted as text when it is valid
// UTF-8 and also walked as a nested message when it parses as one.
function walkProto(b: Uint8Array, out: string[], depth: number): boolean {
  if (depth > 32) return false;
  let pos = 0;
  while (pos < b.length) {
    const tag = readVarint(b, pos);
    if (!tag || tag[0] >>> 3 === 0) return false;
    pos = tag[1];
    switch (tag[0] & 7) {
      case 0: {
        const v = readVarint(b, pos);
        if (!v) return false;
        pos = v[1];
        break;
      }
      case 1:
        pos += 8;
        break;
      case 5:
        pos += 4;
        break;
      case 2: {
        const len = readVarint(b, pos);
        if (!len || len[1] + len[0] > b.length) return false;
        const sub = b.subarray(len[1], len[1] + len[0]);
        pos = len[1] + len[0];
        const nested: string[] = [];
        if (sub.length > 0 && walkProto(sub, nested, depth + 1)) out.push(...nested);
        try {
          out.push(decoder.decode(sub));
        } catch {
          // not text: bytes or a nested message already walked
        }
        break;
      }
      default:
        return false;
    }
    if (pos > b.length) return false;
  }
  return true;
}
