import { decodeHTML } from "entities";

/**
 * Normalisation before classification: the classifier runs over the text as given and over
 * "views" of it in which encodings and look-alike characters are undone, so a value hidden as
 * base64, percent-encoding, HTML entities, `\uXXXX` escapes, UTF-16, full-width characters,
 * odd spaces or dashes, or split across a line is still seen. Every view maps its spans back to
 * the original text, so a finding always points at the characters that carried the value.
 *
 * The work is bounded (NormaliseLimits): decoding nests at most `maxDepth` layers, at most
 * `maxViews` views are made and their total length is capped, so a crafted payload (a base64
 * bomb, 1,000 layers of percent-encoding) costs at most a small constant times its own size.
 */

/** Bounds of the normalisation work. */
export interface NormaliseLimits {
  /** Decoding layers (base64 in base64, percent in percent ...) followed at most. @default 4 */
  maxDepth: number;
  /** Views made at most, the original included. @default 32 */
  maxViews: number;
  /** Total characters over all views made, as a multiple of the input length (plus 4096). @default 6 */
  budgetFactor: number;
  /** Base64 tokens decoded at most per view. @default 16 */
  maxTokensPerView: number;
}

/** Default bounds (documented in docs/egress.md). */
export const DEFAULT_NORMALISE_LIMITS: Readonly<NormaliseLimits> = {
  maxDepth: 4,
  maxViews: 32,
  budgetFactor: 6,
  maxTokensPerView: 16,
};

/** One view of the input: its text, how it was derived, and where its spans lie in the input. */
export interface View {
  text: string;
  /** The transformations applied, outermost first (e.g. ["base64", "fold"]); empty for the input. */
  via: string[];
  /** The input span [start, end) that view span [start, end) came from. */
  origin(start: number, end: number): [number, number];
  /**
   * Where this view differs from the view it was derived from ([start, end) pairs in this view,
   * ascending); undefined when all of it is new (the input, a decoded token). A value first seen
   * in this view lies across one of these, so only windows around them need scanning.
   */
  changed?: [number, number][];
}

/**
 * The parts of `view` worth scanning: the whole text, or each changed range widened by `pad`
 * characters and out to a token boundary, merged where they meet.
 */
export function scanWindows(view: View, pad = 256): [number, number][] {
  const text = view.text;
  if (view.changed === undefined) return [[0, text.length]];
  const boundary = /[\s"',;{}[\]<>|]/;
  const out: [number, number][] = [];
  for (const [cs, ce] of view.changed) {
    let s = Math.max(0, cs - pad);
    let e = Math.min(text.length, ce + pad);
    for (let k = 0; k < 128 && s > 0 && !boundary.test(text.charAt(s - 1)); k++) s--;
    for (let k = 0; k < 128 && e < text.length && !boundary.test(text.charAt(e)); k++) e++;
    const last = out[out.length - 1];
    if (last && s <= last[1]) last[1] = Math.max(last[1], e);
    else out.push([s, e]);
  }
  return out;
}

/** A character-level rewrite: output text plus, per output char, the input span it came from. */
interface Rewrite {
  text: string;
  from: Int32Array;
  to: Int32Array;
  changed: [number, number][];
}

class Builder {
  private out: string[] = [];
  private from: Int32Array;
  private to: Int32Array;
  private length = 0;
  private changed: [number, number][] = [];
  constructor(capacity: number) {
    this.from = new Int32Array(Math.max(16, capacity));
    this.to = new Int32Array(Math.max(16, capacity));
  }
  push(s: string, start: number, end: number): void {
    if (this.length + s.length > this.from.length) {
      const size = Math.max(this.from.length * 2, this.length + s.length);
      const from = new Int32Array(size);
      const to = new Int32Array(size);
      from.set(this.from);
      to.set(this.to);
      this.from = from;
      this.to = to;
    }
    this.out.push(s);
    const last = this.changed[this.changed.length - 1];
    if (last && last[1] === this.length) last[1] = this.length + s.length;
    else this.changed.push([this.length, this.length + s.length]);
    this.from.fill(start, this.length, this.length + s.length);
    this.to.fill(end, this.length, this.length + s.length);
    this.length += s.length;
  }
  /** Copies text[start, end) unchanged. */
  copy(text: string, start: number, end: number): void {
    if (end <= start) return;
    const changed = this.changed.length;
    this.push(text.slice(start, end), 0, 0);
    this.changed.length = changed;
    const tail = this.changed[changed - 1];
    // A copied run right after a change: the change ends where the copy starts.
    if (tail && tail[1] > this.length - (end - start)) tail[1] = this.length - (end - start);
    for (let k = 0; k < end - start; k++) {
      this.from[this.length - (end - start) + k] = start + k;
      this.to[this.length - (end - start) + k] = start + k + 1;
    }
  }
  done(): Rewrite {
    return {
      text: this.out.join(""),
      from: this.from.subarray(0, this.length),
      to: this.to.subarray(0, this.length),
      changed: this.changed,
    };
  }
}

function derive(parent: View, r: Rewrite, step: string): View {
  return {
    text: r.text,
    via: [...parent.via, step],
    // A removed character (zero-width, a joined line break) is a change of zero length.
    changed: r.changed,
    origin(start, end) {
      if (r.text.length === 0) return parent.origin(0, 0);
      const s = r.from[Math.min(start, r.text.length - 1)] ?? 0;
      const e = r.to[Math.max(0, Math.min(end, r.text.length) - 1)] ?? s;
      return parent.origin(s, Math.max(s, e));
    },
  };
}

const DROPPED = new Set([0x0000, 0x00ad, 0x200b, 0x200c, 0x200d, 0x2060, 0xfeff]);
function foldChar(cp: number): string {
  if (DROPPED.has(cp)) return "";
  if (cp === 0x00a0 || cp === 0x1680 || (cp >= 0x2000 && cp <= 0x200a) || cp === 0x202f || cp === 0x205f) return " ";
  if (cp === 0x3000) return " ";
  if ((cp >= 0x2010 && cp <= 0x2015) || cp === 0x2212 || cp === 0xfe58 || cp === 0xfe63 || cp === 0xff0d) return "-";
  if (cp >= 0xff01 && cp <= 0xff5e) return String.fromCharCode(cp - 0xfee0);
  return String.fromCodePoint(cp);
}

const ENTITY_RE = /^&(?:#[0-9]{1,7}|#[xX][0-9a-fA-F]{1,6}|[A-Za-z][A-Za-z0-9]{1,31});?/;
// Escapes that can hide a value: line breaks and tabs, "\/" in URLs, and "\\" one level up when an
// escape follows (JSON in JSON). Escaped quotes hide nothing and stay, so plain JSON is no new view.
const JSON_ESCAPES: Record<string, string> = { n: "\n", r: "\r", t: "\t", "/": "/" };
const NESTED_ESCAPE = /^\\\\(?:u[0-9a-fA-F]{4}|[nrt/]|\\)/;

/**
 * Folds look-alike characters and undoes character escapes in one pass: HTML entities, `\uXXXX`
 * (with surrogate pairs) and JSON escapes, full-width ASCII, NBSP/thin/ideographic spaces to a space,
 * zero-width characters, soft hyphens and NULs (UTF-16 read as bytes) dropped, Unicode dashes to "-".
 */
export function fold(text: string): Rewrite {
  const b = new Builder(text.length);
  let i = 0;
  let run = 0; // start of the pending run of characters that fold to themselves
  const emit = (s: string, width: number): void => {
    b.copy(text, run, i);
    b.push(s, i, i + width);
    i += width;
    run = i;
  };
  while (i < text.length) {
    const c = text.charCodeAt(i);
    // Printable ASCII other than & and \ folds to itself.
    if (c >= 0x20 && c < 0x7f && c !== 0x26 && c !== 0x5c) {
      i++;
      continue;
    }
    if (c === 0x26 /* & */) {
      const m = ENTITY_RE.exec(text.slice(i, i + 40));
      const decoded = m ? decodeHTML(m[0]) : undefined;
      if (m && decoded !== m[0]) {
        let out = "";
        for (const ch of decoded ?? "") out += foldChar(ch.codePointAt(0) ?? 0);
        emit(out, m[0].length);
        continue;
      }
    } else if (c === 0x5c /* \ */) {
      const u = /^\\u([0-9a-fA-F]{4})(?:\\u([0-9a-fA-F]{4}))?/.exec(text.slice(i, i + 12));
      if (u) {
        const hi = parseInt(u[1] ?? "0", 16);
        const lo = u[2] === undefined ? -1 : parseInt(u[2], 16);
        if (hi >= 0xd800 && hi < 0xdc00 && lo >= 0xdc00 && lo < 0xe000)
          emit(foldChar(0x10000 + ((hi - 0xd800) << 10) + (lo - 0xdc00)), 12);
        else emit(foldChar(hi), 6);
        continue;
      }
      const esc = NESTED_ESCAPE.test(text.slice(i, i + 7)) ? "\\" : JSON_ESCAPES[text.charAt(i + 1)];
      if (esc !== undefined) {
        emit(esc, 2);
        continue;
      }
    }
    const cp = text.codePointAt(i) ?? c;
    const width = cp > 0xffff ? 2 : 1;
    const folded = foldChar(cp);
    if (folded === text.slice(i, i + width)) i += width;
    else emit(folded, width);
  }
  b.copy(text, run, text.length);
  return b.done();
}

const JOINERS = /[.@:/+=_()[\]-]/;
/** A line that starts a new field ("tier: gold", "\"name\":", "ssn = …"), not the rest of a value. */
const NEW_FIELD = /^["']?[\p{L}_][\p{L}\p{N}_.-]+["']?\s*(?::(?:\s|["'{[]|$)|=)/u;
/**
 * Joins lines where a value was wrapped: a line break between two letters or digits, next to a
 * joiner (`.@:/+=_()[]-`) or ending a long line (wrapped base64) is removed, or becomes one space
 * when blanks stood around it. A break before a line that starts a new field ("…40\n  tier: …") stays.
 */
export function joinLines(text: string, blanksAsSpace: boolean): Rewrite {
  const b = new Builder(text.length);
  const re = /[ \t]*(?:\r\n|\n|\r)[ \t]*/g;
  let last = 0;
  let lineStart = 0;
  for (const m of text.matchAll(re)) {
    const before = text.charAt(m.index - 1);
    const after = text.charAt(m.index + m[0].length);
    const lineLength = m.index - lineStart;
    lineStart = m.index + m[0].length;
    if (m.index === 0 || before === "" || after === "" || /\s/.test(after)) continue;
    if (NEW_FIELD.test(text.slice(m.index + m[0].length, m.index + m[0].length + 64))) continue;
    const alnum = /[\p{L}\p{N}]/u.test(before) && /[\p{L}\p{N}]/u.test(after);
    if (!(alnum || JOINERS.test(before) || JOINERS.test(after) || lineLength >= 40)) continue;
    b.copy(text, last, m.index);
    if (blanksAsSpace && /^[ \t]|[ \t]$/.test(m[0])) b.push(" ", m.index, m.index + m[0].length);
    else b.push("", m.index, m.index + m[0].length);
    last = m.index + m[0].length;
  }
  b.copy(text, last, text.length);
  return b.done();
}

/** A query string or form body with `+` for spaces ("?q=card+number+4111"). */
const FORM = /[?&][\w.-]+=[^&\s]*\+/;
const PCT_RUN = /(?:%[0-9a-fA-F]{2})+|\+/g;
/** URL form decoding: runs of `%XX` as UTF-8, `+` as a space. */
export function percentDecode(text: string): Rewrite {
  const b = new Builder(text.length);
  let last = 0;
  for (const m of text.matchAll(PCT_RUN)) {
    b.copy(text, last, m.index);
    const end = m.index + m[0].length;
    if (m[0] === "+") b.push(" ", m.index, end);
    else {
      const bytes = Buffer.from(m[0].replace(/%/g, ""), "hex");
      b.push(new TextDecoder("utf-8").decode(bytes), m.index, end);
    }
    last = end;
  }
  b.copy(text, last, text.length);
  return b.done();
}

/** True when `s` reads as text: almost all printable, and not only replacement characters. */
function printable(s: string): boolean {
  if (s.length < 4) return false;
  let bad = 0;
  for (const ch of s) {
    const cp = ch.codePointAt(0) ?? 0;
    if (cp === 0xfffd || (cp < 0x20 && cp !== 9 && cp !== 10 && cp !== 13) || (cp >= 0x7f && cp < 0xa0)) bad++;
  }
  return bad <= s.length * 0.05;
}

/** Decodes bytes as UTF-8, or UTF-16 (BOM, or a NUL in every other byte), when they read as text. */
export function bytesAsText(bytes: Uint8Array): string | undefined {
  const n = bytes.length;
  if (n >= 2) {
    const bomLE = bytes[0] === 0xff && bytes[1] === 0xfe;
    const bomBE = bytes[0] === 0xfe && bytes[1] === 0xff;
    let zeroOdd = 0;
    let zeroEven = 0;
    for (let i = 0; i < n; i++) {
      if (bytes[i] !== 0) continue;
      if (i % 2 === 0) zeroEven++;
      else zeroOdd++;
    }
    const half = Math.floor(n / 2);
    if (bomLE || bomBE || zeroOdd >= half * 0.6 || zeroEven >= half * 0.6) {
      const le = bomLE || (!bomBE && zeroOdd >= zeroEven);
      const s = new TextDecoder(le ? "utf-16le" : "utf-16be").decode(bytes.subarray(bomLE || bomBE ? 2 : 0));
      if (printable(s)) return s;
    }
  }
  const s = new TextDecoder("utf-8").decode(bytes);
  return printable(s) ? s : undefined;
}

const B64_TOKEN = /(?<![A-Za-z0-9+/_-])[A-Za-z0-9+/_-]{12,}={0,2}/g;

/** Base64 / base64url tokens of `text` that decode to text, with their spans (at most `max`). */
export function base64Tokens(text: string, max: number): { start: number; end: number; decoded: string }[] {
  const found: { start: number; end: number; decoded: string }[] = [];
  for (const m of text.matchAll(B64_TOKEN)) {
    if (found.length >= max) break;
    const tok = m[0];
    const body = tok.replace(/=+$/, "");
    // Digits only, hex only or one case of letters only: an id, a hash or a word, not base64 of text.
    if (/^[0-9a-fA-F]+$/.test(body) || /^[a-z_-]+$/.test(body) || /^[A-Z_-]+$/.test(body) || body.length % 4 === 1)
      continue;
    // A path or URL segment list ("api/v1/users") is not a token; base64 of text has few slashes.
    if ((body.match(/\//g) ?? []).length > body.length / 8) continue;
    const decoded = bytesAsText(Buffer.from(body.replace(/-/g, "+").replace(/_/g, "/"), "base64"));
    if (decoded !== undefined) found.push({ start: m.index, end: m.index + tok.length, decoded });
  }
  return found;
}

/** The input and its normalised views, breadth-first, within `limits`. */
export function normalisedViews(text: string, limits: NormaliseLimits = DEFAULT_NORMALISE_LIMITS): View[] {
  const input: View = { text, via: [], origin: (s, e) => [s, e] };
  const views: View[] = [input];
  const seen = new Set<string>([text]);
  let budget = text.length * limits.budgetFactor + 4096 - text.length;
  const offer = (v: View): boolean => {
    if (views.length >= limits.maxViews || v.text.length > budget || seen.has(v.text)) return false;
    budget -= v.text.length;
    seen.add(v.text);
    views.push(v);
    return true;
  };

  // Expands one decoded layer: fold it, join its lines, URL-decode it, and decode its base64 tokens.
  const expand = (v: View, depth: number): void => {
    let base = v;
    // Escapes inside escaped JSON ("{\\"ssn\\":\\"\\\\u0035…") need one fold per level of nesting.
    for (let d = 0; d < limits.maxDepth && (d === 0 || /\\(?:u[0-9a-fA-F]{4}|[nrt])|&#?\w+;/.test(base.text)); d++) {
      const folded = derive(base, fold(base.text), "fold");
      if (!offer(folded)) break;
      base = folded;
    }
    if (/[\r\n]/.test(base.text)) {
      offer(derive(base, joinLines(base.text, false), "lines"));
      // Blanks at a break may be a separator ("4111 1111 \n1111") or indentation ("anna.smi\n    th@").
      if (/[ \t][\r\n]|[\r\n][ \t]/.test(base.text)) offer(derive(base, joinLines(base.text, true), "lines"));
    }
    let pct = base;
    for (
      let d = 0;
      d < limits.maxDepth && (/%[0-9a-fA-F]{2}/.test(pct.text) || (d === 0 && FORM.test(pct.text)));
      d++
    ) {
      const next = derive(pct, percentDecode(pct.text), "percent");
      if (!offer(next)) break;
      pct = derive(next, fold(next.text), "fold");
      offer(pct);
    }
    if (depth >= limits.maxDepth) return;
    for (const source of pct === base ? [base] : [base, pct]) {
      for (const t of base64Tokens(source.text, limits.maxTokensPerView)) {
        const decoded: View = {
          text: t.decoded,
          via: [...source.via, "base64"],
          origin: () => source.origin(t.start, t.end),
        };
        if (offer(decoded)) expand(decoded, depth + 1);
      }
    }
  };
  expand(input, 1);
  return views;
}
