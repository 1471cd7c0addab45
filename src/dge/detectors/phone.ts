import { parsePhoneNumberFromString, type CountryCode, type PhoneNumber } from "libphonenumber-js/max";

/** One phone finding (the classifier's Detection shape). */
export interface PhoneDetection {
  kind: "phone";
  start: number;
  end: number;
  confidence: number;
  rule: string;
}

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
  "SG",
  "ZA",
];

const CANDIDATE_RE =
  /(?<![\p{L}\p{N}+._/-])(?:\+|00|011)?[ ]?(?:\(\d{1,5}\)|\d)(?:[ ]?(?:\(\d{1,5}\)|[.\- /]?\d)){5,20}(?![\p{L}\p{N}]|[.:/-]\d)/gu;
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
    if (digits.length < 7 || digits.length > 17) continue;
    const labelled = PHONE_CONTEXT.test(text.slice(Math.max(0, start - 16), start));
    const idd = /^(?:\+|00(?!0)|011)/.exec(raw);
    if (idd) {
      const p = valid(`+${raw.slice(idd[0].length)}`);
      if (p) {
        out.push({ kind: "phone", start, end, confidence: 0.9, rule: "libphonenumber_intl" });
        continue;
      }
      if (raw.startsWith("+")) continue;
    }
    const grouped = groupsOf(raw).includes(" ");
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
