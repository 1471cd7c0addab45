import { base58check, bech32, bech32m } from "@scure/base";
import { sha256 } from "@noble/hashes/sha2.js";
import { keccak_256 } from "@noble/hashes/sha3.js";
import type { Detection } from "../pii-kinds.js";
import { labelled as labelledBefore } from "./guards.js";

/** A finding of these detectors: one of the identifier kinds of PII_KINDS (../pii-kinds.ts). */
type IdentifierDetection = Detection & {
  kind: "us_itin" | "us_passport" | "uk_nino" | "mac_address" | "crypto_wallet";
};

const CHECKSUM = 0.99;
const PATTERN_WITH_CONTEXT = 0.9;
const PATTERN = 0.8;

// ITIN: 9XX-7X-XXXX etc.; group (4th-5th digits) 50-65, 70-88, 90-92, 94-99 (IRS, since 2011).
const ITIN_RE = /(?<![\p{L}\p{N}-]|\d[ .])(9\d{2})([ .-]?)(\d{2})\2(\d{4})(?![\p{N}-]|[ .]\d)/gu;
const ITIN_CONTEXT =
  /(?:itin|tin|tax[\s_-]*(?:payer)?[\s_-]*(?:id|identification)(?:[\s_-]*(?:no|number))?|taxId)\W{0,6}$/i;

/** True when `group` is an ITIN group number. */
export function itinGroupValid(group: number): boolean {
  return (group >= 50 && group <= 65) || (group >= 70 && group <= 88) || (group >= 90 && group <= 92) || group >= 94;
}

// US passport book numbers: 9 digits, or a letter and 8 digits (Next Generation passports); only
// under a passport label, since nine digits alone are any reference number.
const PASSPORT_RE = /(?<![\p{L}\p{N}])([A-Z]?\d{8,9})(?![\p{L}\p{N}])/gu;
const PASSPORT_CONTEXT = /passport(?:[\s_-]*(?:no|num|number|#|id))?\W{0,6}$/i;

// UK National Insurance number (HMRC NIM39110): prefix letters exclude D F I Q U V, second not O,
// and BG GB KN NK NT TN ZZ are never issued; suffix A-D.
const NINO_RE =
  /(?<![\p{L}\p{N}])([A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z])[ ]?(\d{2})[ ]?(\d{2})[ ]?(\d{2})[ ]?([A-D])(?![\p{L}\p{N}])/gu;
const NINO_NEVER = new Set(["BG", "GB", "KN", "NK", "NT", "TN", "ZZ"]);

// MAC-48: six hex pairs with one separator (":" or "-"), or Cisco's three dotted quads.
const MAC_RE =
  /(?<![\p{L}\p{N}:.-])(?:[0-9a-f]{2}([:-])[0-9a-f]{2}(?:\1[0-9a-f]{2}){4}|[0-9a-f]{4}\.[0-9a-f]{4}\.[0-9a-f]{4})(?![\p{L}\p{N}]|[:.-][0-9a-f])/giu;

// Bitcoin/Litecoin base58check (P2PKH, P2SH), bech32/bech32m segwit, Ethereum 0x addresses.
const B58_RE = /(?<![\p{L}\p{N}])[13LM][1-9A-HJ-NP-Za-km-z]{25,34}(?![\p{L}\p{N}])/gu;
const BECH32_RE = /(?<![\p{L}\p{N}])(?:bc1|ltc1|tb1)[02-9ac-hj-np-z]{8,87}(?![\p{L}\p{N}])/giu;
const ETH_RE = /(?<![\p{L}\p{N}])0x[0-9a-fA-F]{40}(?![\p{L}\p{N}])/gu;
const B58_VERSIONS = new Set([0x00, 0x05, 0x30, 0x32]);
const b58check = base58check(sha256);

function base58Address(s: string): boolean {
  try {
    const payload = b58check.decode(s);
    return payload.length === 21 && B58_VERSIONS.has(payload[0] ?? -1);
  } catch {
    return false;
  }
}

function segwitAddress(s: string): boolean {
  const lower = s.toLowerCase();
  if (s !== lower && s !== s.toUpperCase()) return false;
  for (const codec of [bech32, bech32m]) {
    try {
      const { prefix, words } = codec.decode(lower as `${string}1${string}`, 90);
      if (!["bc", "ltc", "tb"].includes(prefix) || words.length === 0) continue;
      const version = words[0] ?? -1;
      // BIP-350: version 0 uses bech32, versions 1-16 bech32m.
      if ((version === 0) !== (codec === bech32)) continue;
      const program = codec.fromWords(words.slice(1));
      if (program.length >= 2 && program.length <= 40) return true;
    } catch {
      // not this encoding
    }
  }
  return false;
}

/** EIP-55: a mixed-case address must carry its checksum; one case only is accepted as is. */
export function ethAddressValid(s: string): boolean {
  const body = s.slice(2);
  if (body === body.toLowerCase() || body === body.toUpperCase()) return !/^0+$/.test(body);
  const hash = keccak_256(new TextEncoder().encode(body.toLowerCase()));
  for (let i = 0; i < 40; i++) {
    const nibble = ((hash[i >> 1] ?? 0) >> (i % 2 === 0 ? 4 : 0)) & 0xf;
    const ch = body.charAt(i);
    if (/[a-f]/i.test(ch) && nibble >= 8 !== (ch === ch.toUpperCase())) return false;
  }
  return true;
}

/** Finds ITINs, US passport numbers, UK NINOs, MAC addresses and crypto wallet addresses. */
export function detectIdentifiers(text: string): IdentifierDetection[] {
  const out: IdentifierDetection[] = [];
  for (const m of text.matchAll(ITIN_RE)) {
    if (!itinGroupValid(Number(m[3]))) continue;
    const separated = (m[2] ?? "") !== "";
    const labelled = labelledBefore(text, m.index, ITIN_CONTEXT);
    if (!separated && !labelled) continue;
    out.push({
      kind: "us_itin",
      start: m.index,
      end: m.index + m[0].length,
      confidence: labelled ? CHECKSUM : PATTERN_WITH_CONTEXT,
      rule: "irs_itin",
    });
  }
  for (const m of text.matchAll(PASSPORT_RE)) {
    if (!labelledBefore(text, m.index, PASSPORT_CONTEXT)) continue;
    out.push({
      kind: "us_passport",
      start: m.index,
      end: m.index + m[0].length,
      confidence: PATTERN_WITH_CONTEXT,
      rule: "passport_label",
    });
  }
  for (const m of text.matchAll(NINO_RE)) {
    if (NINO_NEVER.has(m[1] ?? "")) continue;
    out.push({
      kind: "uk_nino",
      start: m.index,
      end: m.index + m[0].length,
      confidence: PATTERN_WITH_CONTEXT,
      rule: "nino",
    });
  }
  for (const m of text.matchAll(MAC_RE)) {
    const hex = m[0].replace(/[^0-9a-f]/gi, "").toLowerCase();
    // All-zero and broadcast addresses are placeholders, not a device.
    if (hex === "000000000000" || hex === "ffffffffffff") continue;
    out.push({ kind: "mac_address", start: m.index, end: m.index + m[0].length, confidence: PATTERN, rule: "mac48" });
  }
  for (const m of text.matchAll(B58_RE)) {
    if (base58Address(m[0]))
      out.push({
        kind: "crypto_wallet",
        start: m.index,
        end: m.index + m[0].length,
        confidence: CHECKSUM,
        rule: "base58check",
      });
  }
  for (const m of text.matchAll(BECH32_RE)) {
    if (segwitAddress(m[0]))
      out.push({
        kind: "crypto_wallet",
        start: m.index,
        end: m.index + m[0].length,
        confidence: CHECKSUM,
        rule: "bech32",
      });
  }
  for (const m of text.matchAll(ETH_RE)) {
    if (ethAddressValid(m[0]))
      out.push({
        kind: "crypto_wallet",
        start: m.index,
        end: m.index + m[0].length,
        confidence: PATTERN_WITH_CONTEXT,
        rule: "eip55",
      });
  }
  return out;
}
