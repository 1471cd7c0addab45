import { BlockList, isIPv6 } from "node:net";

/**
 * Addresses of infrastructure, not of a person: loopback, private (RFC 1918, RFC 4193), link-local,
 * carrier-grade NAT, unspecified and documentation ranges. An agent endpoint such as
 * `10.0.0.7:7000` or `127.0.0.1:50061` is one of these, so the kernel's own registration events
 * stay operational metadata (D1); a public address is still an `ip_address` finding (D2).
 */
const INTERNAL = new BlockList();
for (const [net, prefix] of [
  ["0.0.0.0", 8],
  ["10.0.0.0", 8],
  ["100.64.0.0", 10],
  ["127.0.0.0", 8],
  ["169.254.0.0", 16],
  ["172.16.0.0", 12],
  ["192.0.2.0", 24],
  ["192.168.0.0", 16],
  ["198.18.0.0", 15],
  ["198.51.100.0", 24],
  ["203.0.113.0", 24],
] as const)
  INTERNAL.addSubnet(net, prefix, "ipv4");
for (const [net, prefix] of [
  ["::", 128],
  ["::1", 128],
  ["fc00::", 7],
  ["fe80::", 10],
  ["2001:db8::", 32],
] as const)
  INTERNAL.addSubnet(net, prefix, "ipv6");

/** True for loopback, private, link-local, CGNAT, unspecified and documentation addresses. */
export function internalAddress(addr: string): boolean {
  const v6 = isIPv6(addr);
  const mapped = v6 ? /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(addr) : null;
  if (mapped) return INTERNAL.check(mapped[1] ?? "", "ipv4");
  return INTERNAL.check(addr, v6 ? "ipv6" : "ipv4");
}

const UUID_IN_TEXT = /(?<![0-9a-f])[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}(?![0-9a-f])/gi;
const HEX = /[0-9a-fA-F]/;

/**
 * True when text[start, end) overlaps a UUID or lies inside a long hex id (32+ hex digits: a hash,
 * a trace id): digit runs in those pass Luhn or mod-97 by chance (about one random UUID in 8,000
 * did), and an identifier is not a card or an account number.
 */
export function insideHexId(text: string, start: number, end: number): boolean {
  const from = Math.max(0, start - 36);
  for (const m of text.slice(from, end + 36).matchAll(UUID_IN_TEXT)) {
    const s = from + m.index;
    if (start < s + m[0].length && end > s) return true;
  }
  let s = start;
  let e = end;
  while (s > 0 && HEX.test(text.charAt(s - 1))) s--;
  while (e < text.length && HEX.test(text.charAt(e))) e++;
  return e - s >= 32 && /^[0-9a-fA-F]+$/.test(text.slice(s, e));
}

/**
 * The header cell above `index` when it sits in a CSV/TSV/semicolon/pipe row under a header line:
 * `name,ssn\nAnna,536221234` gives "ssn" for the digits. The header is the top of the block of
 * lines with the row's number of separators when that line has no digits (a header), else the
 * line above the block, read from after its last quote or bracket (a CSV embedded in a JSON string).
 */
export function csvHeaderOf(text: string, index: number): string | undefined {
  const lineStart = text.lastIndexOf("\n", index - 1) + 1;
  if (lineStart === 0) return undefined;
  const lineEnd = text.indexOf("\n", index);
  const row = text.slice(lineStart, lineEnd === -1 ? text.length : lineEnd);
  const before = text.slice(lineStart, index);
  for (const sep of [",", ";", "\t", "|"]) {
    if (!row.includes(sep)) continue;
    const count = (line: string): number => line.split(sep).length;
    const lines = text.slice(Math.max(0, lineStart - 2048), lineStart - 1).split("\n");
    let top = row;
    let k = lines.length - 1;
    for (; k >= 0 && count(lines[k]!.replace(/\r$/, "")) === count(row); k--) top = lines[k]!.replace(/\r$/, "");
    let header = top;
    if (/\d/.test(top) || top === row) {
      if (k < 0) return undefined;
      header = (lines[k] ?? "").replace(/\r$/, "");
      const cut = Math.max(...['"', "'", "[", "{", ":"].map((c) => header.lastIndexOf(c)));
      const tail = header.slice(cut + 1);
      if (tail.includes(sep)) header = tail;
    }
    const cell = header.split(sep)[before.split(sep).length - 1];
    return cell === undefined ? undefined : cell.trim().replace(/^["']|["']$/g, "");
  }
  return undefined;
}

/** True when the 40 characters before `index`, or the CSV header of its column, match `label`. */
export function labelled(text: string, index: number, label: RegExp): boolean {
  if (label.test(text.slice(Math.max(0, index - 40), index))) return true;
  const cell = csvHeaderOf(text, index);
  return cell !== undefined && label.test(cell);
}
