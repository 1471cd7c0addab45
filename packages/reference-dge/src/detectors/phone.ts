import type { Detection } from "../pii-kinds.js";
import { labelled as labelledBefore } from "./guards.js";
import { parsePhoneNumberFromString, type CountryCode, type PhoneNumber } from "libphonenumber-js/max";

/** A phone finding. */
type PhoneDetection = Detection & { kind: "phone" };

/**
 * Regions whose national formats are recognised without a `+`: the US first (the default), then
 * the largest markets of the deployments. A national number counts only when written with the
 * region's own digit grouping (or under a phone label), so the list does not turn any digit run
 * into a phone.
 */
export const NATIONAL_REGIONS: readonly CountryCode[] = [
  "US",
  "GB",
  "DE",
  "FR",
  "ES",
  "IT",
  "NL",
  "BE",
  "CH",
  "AT",
  "SE",
  "PL",
  "IE",
  "IN",
  "JP",
  "AU",
  "BR",
  "MX",
  "ZA",
];

const CANDIDATE_RE =
  /(?<![\p{L}\p{N}+._/-])(?:\+|00|011)?[ ]?(?:\(\d{1,5}\)|\d)(?:[ ]?(?:\(\d{1,5}\)|[.\- /]?\d)){5,20}(?![\p{L}\p{N}]|[.:/-]\d)/gu;
// Reference numbers grouped like a phone ("invoice 0909-829416") are labelled as what they are.
const NOT_PHONE_CONTEXT =
  /(?:invoice|order|ref|reference|ticket|case|account|acct|iban|sku|imei|serial|zip|postal|postcode|id|no\.?|#)\W{0,3}$/i;
const PHONE_CONTEXT = /(?:phone|tel|telephone|mobile|cell|call|fax|whatsapp|sms|ring|contact)\W{0,4}$/i;

/** The digit groups of `s`, joined by single spaces. */
function groupsOf(s: string): string {
  return s
    .split(/\D+/)
    .filter((g) => g !== "")
    .join(" ");
}

function valid(raw: string, region?: CountryCode): PhoneNumber | undefined {
  const p = region === undefined ? parsePhoneNumberFromString(raw) : parsePhoneNumberFromString(raw, region);
  return p?.isValid() ? p : undefined;
}

/** Finds phone numbers: international (`+`, `00`, `011`), national in a region's grouping, or labelled. */
export function detectPhones(text: string): PhoneDetection[] {
  const out: PhoneDetection[] = [];
  for (const m of text.matchAll(CANDIDATE_RE)) {
    const raw = m[0].trim();
    const start = m.index + (m[0].length - m[0].trimStart().length);
    const end = start + raw.length;
    const digits = raw.replace(/\D/g, "");
    // Four dotted groups of 1-3 digits read as an address or a version ("934.58.33.47"), not a phone.
    if (/^\d{1,3}(?:\.\d{1,3}){3}$/.test(raw)) continue;
    if (digits.length < 7 || digits.length > 17) continue;
    const labelled = labelledBefore(text, start, PHONE_CONTEXT);
    if (!labelled && NOT_PHONE_CONTEXT.test(text.slice(Math.max(0, start - 16), start))) continue;
    const grouped = groupsOf(raw).includes(" ");
    const idd = /^(?:\+|00(?!0)|011)/.exec(raw);
    // "00"/"011" dialled from abroad are written grouped ("0049 30 …") or under a label; a bare
    // run starting 00/011 is any reference number.
    if (idd && (raw.startsWith("+") || grouped || labelled)) {
      const p = valid(`+${raw.slice(idd[0].length)}`);
      if (p) {
        out.push({ kind: "phone", start, end, confidence: 0.9, rule: "libphonenumber_intl" });
        continue;
      }
      if (raw.startsWith("+")) continue;
    }
    if (!grouped && !labelled) continue;
    for (const region of NATIONAL_REGIONS) {
      const p = valid(raw, region);
      if (!p) continue;
      if (labelled || (grouped && groupsOf(raw) === groupsOf(p.formatNational()))) {
        out.push({ kind: "phone", start, end, confidence: labelled ? 0.9 : 0.8, rule: "libphonenumber" });
        break;
      }
    }
  }
  return out;
}
