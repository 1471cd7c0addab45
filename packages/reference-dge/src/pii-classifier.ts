import { isIPv4, isIPv6 } from "node:net";
import { cardBrand, IBAN_LENGTHS, ibanValid, luhnValid, shannonEntropy, ssnValid } from "./checksums.js";
import { insideHexId, internalAddress, labelled as labelledAt } from "./detectors/guards.js";
import { detectIdentifiers } from "./detectors/identifiers.js";
import { detectPhones } from "./detectors/phone.js";
import { EXTRA_SECRET_RULES } from "./detectors/secrets.js";
import {
  DEFAULT_NORMALISE_LIMITS,
  normalisedViews,
  scanWindows,
  type NormaliseLimits,
  type View,
} from "./normalise.js";
import type { Detection, PiiKind } from "./pii-kinds.js";

// Checksummed matches are near-certain; pattern-only matches less so.
const CHECKSUM = 0.99;
const PATTERN_WITH_CONTEXT = 0.9;
const PATTERN = 0.8;

const AT = String.raw`(?:@|\s+@\s+|\s*[[({<]\s*at\s*[\])}>]\s*|\s+at\s+)`;
const DOT = String.raw`(?:\.|\s*[[({<]\s*dot\s*[\])}>]\s*|\s+dot\s+)`;
const LABEL = String.raw`[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?`;
const EMAIL_RE = new RegExp(
  String.raw`(?<![a-z0-9._%+-])([a-z0-9](?:[a-z0-9._%+-]{0,62}[a-z0-9])?)(${AT})(${LABEL}(?:${DOT}${LABEL})*)${DOT}([a-z]{2,24})(?![a-z0-9-])`,
  "gi",
);
// "john at example dot com" is how people hide addresses, but "look at this dot net" is prose:
// the spelled-out form only counts with a common top-level domain.
const COMMON_TLDS = new Set([
  "com",
  "org",
  "net",
  "io",
  "dev",
  "ai",
  "app",
  "edu",
  "gov",
  "mil",
  "info",
  "biz",
  "co",
  "us",
  "uk",
  "de",
  "fr",
  "es",
  "it",
  "nl",
  "be",
  "ch",
  "at",
  "se",
  "no",
  "dk",
  "fi",
  "pl",
  "eu",
  "ca",
  "au",
  "jp",
  "in",
  "br",
]);

// Not inside a longer run of digit groups (a tracking number's fourth group is no card's first).
// Words that stand before "at <domain> dot com" in prose (where a spelled address has a name).
const SPELLED_PROSE = new Set(
  "in on up us me it is be we them him her you log sign signed logged found find visit available online here there look us".split(
    " ",
  ),
);

const URL_AUTHORITY = /\b[a-z][a-z0-9+.-]{1,20}:\/\/[^\s/?#]*$/i;
const CARD_RE = /(?<![\p{L}\p{N}]|\d[ .-])\d(?:[ .-]?\d){12,18}(?![\p{L}\p{N}])/gu;
// An IMEI is Luhn-checked too, and ISBNs, tracking and order numbers are long digit runs: a label says which.
const CARD_NOT_BEFORE = /(?:imei|imeisv|isbn|tracking|track(?:ing)?[\s_-]*(?:no|number|#|id)|awb|meid|iccid)\W{0,6}$/i;
const SSN_RE =
  /(?<![\p{L}\p{N}-]|\d[ .])(\d{3})([ .-])(\d{2})\2(\d{4})(?![\p{N}-]|[ .]\d)|(?<![\p{L}\p{N}])(\d{3})(\d{2})(\d{4})(?![\p{L}\p{N}])/gu;
const SSN_CONTEXT =
  /(?:ssn|social[\s_-]*security(?:[\s_-]*(?:no|num|number|#))?|soc\.?\s*sec\.?|taxpayer[\s_-]*id|tax[\s_-]*id)\W{0,6}$/i;
const IBAN_RE = /(?<![\p{L}\p{N}])([a-z]{2}\d{2})((?:[ -]?[a-z0-9]){10,30})/giu;
const OCTET_SEP = String.raw`(?:\.|\[\.\]|\(\.\)|\[dot\]|\(dot\)|\{\.\})`;
const IPV4_RE = new RegExp(
  String.raw`(?<![\p{L}\p{N}.])(\d{1,3})${OCTET_SEP}(\d{1,3})${OCTET_SEP}(\d{1,3})${OCTET_SEP}(\d{1,3})(?![\p{L}\p{N}]|\.\d)`,
  "giu",
);
const VERSION_CONTEXT = /(?:\bv|\bver(?:sion)?\.?\s*|\brelease\s*|\bbuild\s*|\bfirmware\s*)$/i;
const IPV6_RE =
  /(?<![\p{L}\p{N}:.])((?:[0-9a-f]{0,4}:){2,7}(?:[0-9a-f]{1,4}|\d{1,3}(?:\.\d{1,3}){3})?)(?:%[0-9a-z]+)?(?![\p{L}\p{N}:])/giu;

interface SecretRule {
  rule: string;
  re: RegExp;
  /** Group holding the secret value when the match includes a label. */
  group?: number;
  check?: (value: string) => boolean;
}

const SECRET_RULES: SecretRule[] = [
  { rule: "aws_access_key_id", re: /\b(?:AKIA|ASIA)[0-9A-Z]{16}\b/g },
  { rule: "github_token", re: /\bgh[pousr]_[A-Za-z0-9]{36}\b/g },
  { rule: "github_pat", re: /\bgithub_pat_[A-Za-z0-9_]{60,100}\b/g },
  { rule: "slack_token", re: /\bxox[abposr]-[0-9A-Za-z-]{10,100}\b/g },
  { rule: "stripe_key", re: /\b[rs]k_(?:live|test)_[0-9A-Za-z]{24,99}\b/g },
  { rule: "google_api_key", re: /\bAIza[0-9A-Za-z_-]{35}(?![0-9A-Za-z_-])/g },
  { rule: "openai_style_key", re: /\bsk-(?:proj-|ant-api\d\d-)?[A-Za-z0-9_-]{32,}(?![A-Za-z0-9_-])/g },
  { rule: "jwt", re: /\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{16,}/g },
  { rule: "private_key_pem", re: /-----BEGIN (?:[A-Z]+ )?PRIVATE KEY-----/g },
  ...EXTRA_SECRET_RULES,
  {
    // A labelled value: only counted when it looks random (letters and digits, high entropy), so
    // "password: changeme" or "token: null" are not secrets but "api_key=Zx81..." is.
    rule: "labelled_secret",
    // Pagination and sync cursors ("nextPageToken", "page_token") are not credentials.
    re: /(?:api[_-]?key|apikey|secret(?:[_-]?key)?|access[_-]?token|auth[_-]?token|(?<!(?:page|next|continuation|cursor|sync|resume)[_-]?)token|passwd|password|client[_-]?secret|private[_-]?key)(?:\\?["'])?\s*[:=]\s*(?:\\?["'])?([A-Za-z0-9_\-./+=]{16,200})/gi,
    group: 1,
    check: (v) => /[A-Za-z]/.test(v) && /\d/.test(v) && shannonEntropy(v) >= 3.5,
  },
];

/** Kinds whose digit runs could be part of a UUID or a hash, which are identifiers, not PII. */
const DIGIT_KINDS: ReadonlySet<PiiKind> = new Set(["credit_card", "iban", "us_ssn", "phone", "us_itin", "us_passport"]);

/**
 * Finds structured PII and secrets in `text` and in its normalised views (decoded base64, percent
 * and HTML encodings, escapes, folded look-alike characters, joined lines; see normalise.ts), with
 * spans in `text`. A finding in a decoded view points at the whole encoded token.
 */
export function detectPii(text: string, limits: NormaliseLimits = DEFAULT_NORMALISE_LIMITS): Detection[] {
  const all: { d: Detection; view: number }[] = [];
  normalisedViews(text, limits).forEach((view, i) => {
    for (const d of detectInWindows(view)) {
      const [start, end] = view.origin(d.start, d.end);
      all.push({ d: { ...d, start, end, rule: i === 0 ? d.rule : `${d.rule}+${view.via.join("+")}` }, view: i });
    }
  });
  // The same value seen in several views is one finding (of the earliest view): per kind, a
  // sweep in span order keeps one of each overlapping run.
  all.sort((a, b) => a.d.start - b.d.start || a.view - b.view);
  const kept = new Map<PiiKind, number>(); // kind -> index in `out` of its last finding
  const out: { d: Detection; view: number }[] = [];
  for (const x of all) {
    const at = kept.get(x.d.kind);
    const last = at === undefined ? undefined : out[at];
    if (at !== undefined && last && x.d.start < last.d.end) {
      if (x.view < last.view) out[at] = x;
      continue;
    }
    kept.set(x.d.kind, out.length);
    out.push(x);
  }
  return out.map((x) => x.d).sort((a, b) => a.start - b.start || a.end - b.end);
}

/**
 * Runs the rules over the parts of a view that differ from its parent (scanWindows); a window
 * not at the top of a multi-line text gets the first line in front, so a CSV header still labels
 * the column. Findings are in view coordinates.
 */
function detectInWindows(view: View): Detection[] {
  const windows = scanWindows(view);
  if (windows.length === 1 && windows[0]?.[0] === 0 && windows[0][1] === view.text.length)
    return detectInView(view.text);
  const out: Detection[] = [];
  const firstLine = view.text.includes("\n") ? view.text.slice(0, view.text.indexOf("\n")).slice(0, 2048) : "";
  for (const [s, e] of windows) {
    const prefix = s > firstLine.length && firstLine !== "" ? `${firstLine}\n` : "";
    for (const d of detectInView(prefix + view.text.slice(s, e))) {
      if (d.start < prefix.length) continue;
      out.push({ ...d, start: d.start - prefix.length + s, end: d.end - prefix.length + s });
    }
  }
  return out;
}

/** Finds structured PII and secrets in `text` as it is; later detectors skip spans earlier ones claimed. */
export function detectInView(text: string): Detection[] {
  const found: Detection[] = [];
  // Claimed spans never overlap, so `found` kept sorted by start needs only its two neighbours
  // checked: linear-logarithmic however many findings a large payload has.
  const add = (d: Detection): void => {
    let lo = 0;
    let hi = found.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if ((found[mid]?.start ?? 0) < d.start) lo = mid + 1;
      else hi = mid;
    }
    const before = found[lo - 1];
    const after = found[lo];
    if ((before && before.end > d.start) || (after && after.start < d.end)) return;
    found.splice(lo, 0, d);
  };

  // Secrets and IBANs first: their bodies contain digit runs the card and phone rules would claim.
  for (const r of SECRET_RULES) {
    for (const m of text.matchAll(r.re)) {
      const value = r.group === undefined ? m[0] : (m[r.group] ?? "");
      if (r.check && !r.check(value)) continue;
      // "sk_live_XXXXXXXXXXXXXXXXXXXXXXXX": a run of one character is a mask or an example, not a key.
      if (/(.)\1{7}/.test(value)) continue;
      const start = m.index + (r.group === undefined ? 0 : m[0].length - value.length);
      add({
        kind: "api_secret",
        start,
        end: start + value.length,
        confidence: r.group === undefined ? PATTERN_WITH_CONTEXT : PATTERN,
        rule: r.rule,
      });
    }
  }

  for (const m of text.matchAll(IBAN_RE)) {
    const country = (m[1] ?? "").slice(0, 2).toUpperCase();
    const len = IBAN_LENGTHS[country];
    if (len === undefined) continue;
    // Take exactly the country's length of alphanumerics: the greedy match may run into the next word.
    let compact = (m[1] ?? "").toUpperCase();
    let end = m.index + (m[1] ?? "").length;
    for (const ch of m[2] ?? "") {
      if (compact.length === len) break;
      end++;
      if (ch !== " " && ch !== "-") compact += ch.toUpperCase();
    }
    if (compact.length !== len || /[\p{L}\p{N}]/u.test(text.charAt(end))) continue;
    if (ibanValid(compact)) add({ kind: "iban", start: m.index, end, confidence: CHECKSUM, rule: "mod97" });
  }

  for (const m of text.matchAll(EMAIL_RE)) {
    // "https://user@host" and "redis://user:pass@host": a URL's user part, not a mailbox.
    if (URL_AUTHORITY.test(text.slice(Math.max(0, m.index - 200), m.index))) continue;
    const spelled = /^\s+at\s+$/i.test(m[2] ?? "");
    if (spelled && !COMMON_TLDS.has((m[4] ?? "").toLowerCase())) continue;
    // "sign in at portal dot example dot com" is prose about a site, not an address.
    if (spelled && SPELLED_PROSE.has((m[1] ?? "").toLowerCase())) continue;
    add({
      kind: "email",
      start: m.index,
      end: m.index + m[0].length,
      confidence: spelled ? PATTERN : PATTERN_WITH_CONTEXT,
      rule: "email",
    });
  }

  for (const m of text.matchAll(CARD_RE)) {
    const digits = m[0].replace(/\D/g, "");
    if (
      luhnValid(digits) &&
      cardBrand(digits) &&
      !CARD_NOT_BEFORE.test(text.slice(Math.max(0, m.index - 24), m.index))
    ) {
      add({ kind: "credit_card", start: m.index, end: m.index + m[0].length, confidence: CHECKSUM, rule: "luhn" });
    }
  }

  for (const m of text.matchAll(SSN_RE)) {
    const separated = m[1] !== undefined;
    const [area, group, serial] = separated ? [m[1], m[3], m[4]] : [m[5], m[6], m[7]];
    if (!ssnValid(area ?? "", group ?? "", serial ?? "")) continue;
    // Nine bare digits are any reference number; only a label in front makes them an SSN.
    const labelled = labelledAt(text, m.index, SSN_CONTEXT);
    if (!separated && !labelled) continue;
    add({
      kind: "us_ssn",
      start: m.index,
      end: m.index + m[0].length,
      confidence: labelled ? CHECKSUM : PATTERN_WITH_CONTEXT,
      rule: "ssa_area",
    });
  }

  for (const m of text.matchAll(IPV6_RE)) {
    const addr = m[1] ?? "";
    const groups = addr.split(":").filter((g) => g !== "").length;
    if (groups >= 2 && isIPv6(addr) && !internalAddress(addr))
      add({ kind: "ip_address", start: m.index, end: m.index + m[0].length, confidence: CHECKSUM, rule: "ipv6" });
  }

  for (const m of text.matchAll(IPV4_RE)) {
    const addr = [m[1], m[2], m[3], m[4]].join(".");
    const canonical = addr.replace(/(^|\.)0+(\d)/g, "$1$2");
    if (!isIPv4(canonical) || internalAddress(canonical)) continue;
    // "v1.2.3.4" and "version 10.2.0.1" are release numbers, not addresses (documented in docs/egress.md).
    if (VERSION_CONTEXT.test(text.slice(Math.max(0, m.index - 12), m.index))) continue;
    add({ kind: "ip_address", start: m.index, end: m.index + m[0].length, confidence: CHECKSUM, rule: "ipv4" });
  }

  // Identifiers before phones: "05-15-68-52-78-DF" is a MAC, not a phone followed by letters.
  for (const d of detectIdentifiers(text)) add(d);
  for (const d of detectPhones(text)) add(d);

  return found.filter((d) => !(DIGIT_KINDS.has(d.kind) && insideHexId(text, d.start, d.end)));
}
