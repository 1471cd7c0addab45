/**
 * Secret formats beyond the core rules of ../pii-classifier.ts: vendor tokens with a fixed prefix
 * (GitLab, npm, SendGrid, Hugging Face, Azure, Twilio, DigitalOcean, Shopify), AWS secret access
 * keys under their label, PGP and PEM private key blocks, passwords in URLs and `password=` values.
 */

/** A secret rule: `re` (global) finds it; `group` names the value when the match includes a label. */
export interface ExtraSecretRule {
  rule: string;
  re: RegExp;
  group?: number;
  check?: (value: string) => boolean;
}

/** Values that stand for a secret without being one: templates, masks, examples, empties. */
export function placeholderValue(v: string): boolean {
  const s = v.replace(/^["'`]+|["'`,;]+$/g, "");
  return (
    s.length === 0 ||
    /^(?:\$\{[^}]*\}|\$[A-Z_][A-Z0-9_]*|\{\{[^}]*\}\}|<[^>]*>|%s|\[[^\]]*\]|%\([a-z_]+\)s)$/i.test(s) ||
    /^[*xX•.#-]+$/.test(s) ||
    /^(?:null|none|nil|undefined|true|false|empty|redacted|hidden|masked|secret|password|passwd|pass|changeme|example|placeholder|your[_-]?[a-z_-]*|my[_-]?password|not[_-]?set|n\/a|todo|xxx+)$/i.test(
      s,
    ) ||
    /^(?:\*+|x+|<|\{\{|\$\{)/i.test(s)
  );
}

/** Two or more of lower, upper, digit, symbol: a chosen password, not a word of prose. */
function mixedClasses(v: string): boolean {
  const classes = [/[a-z]/, /[A-Z]/, /\d/, /[^A-Za-z0-9]/].filter((re) => re.test(v)).length;
  return classes >= 2;
}

/** The extra rules, in the order they claim spans. */
export const EXTRA_SECRET_RULES: ExtraSecretRule[] = [
  { rule: "pgp_private_key", re: /-----BEGIN PGP PRIVATE KEY BLOCK-----/g },
  { rule: "gitlab_token", re: /\bgl(?:pat|dt|rt|ptt|ft|imt|agent|soat)-[0-9A-Za-z_-]{20,64}(?![0-9A-Za-z_-])/g },
  { rule: "npm_token", re: /\bnpm_[A-Za-z0-9]{36}\b/g },
  { rule: "sendgrid_key", re: /\bSG\.[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{43}(?![A-Za-z0-9_-])/g },
  { rule: "huggingface_token", re: /\bhf_[A-Za-z0-9]{34,40}\b/g },
  { rule: "digitalocean_token", re: /\bdo[opr]_v1_[a-f0-9]{64}\b/g },
  { rule: "shopify_token", re: /\bshp(?:at|ca|pa|ss)_[a-fA-F0-9]{32}\b/g },
  { rule: "twilio_api_key", re: /\bSK[0-9a-fA-F]{32}\b/g },
  {
    rule: "azure_ad_client_secret",
    re: /(?<![A-Za-z0-9_~.-])[A-Za-z0-9_~.]{3}\dQ~[A-Za-z0-9_~.-]{31,34}(?![A-Za-z0-9_~.-])/g,
  },
  {
    rule: "azure_storage_key",
    re: /\b(?:AccountKey|SharedAccessKey)\s*=\s*([A-Za-z0-9+/]{40,100}={0,2})/g,
    group: 1,
  },
  {
    rule: "aws_secret_access_key",
    re: /(?:aws[_-]?secret[_-]?(?:access[_-]?)?key|secret[_-]?access[_-]?key|SecretAccessKey)(?:\\?["'])?\s*[:=]\s*(?:\\?["'])?([A-Za-z0-9/+]{40})(?![A-Za-z0-9/+])/gi,
    group: 1,
  },
  {
    // scheme://user:password@host — the password part.
    rule: "url_credentials",
    re: /\b[a-z][a-z0-9+.-]{1,20}:\/\/[^\s:/@"'<>]{1,64}:([^\s:/@"'<>]{1,128})(?=@[a-z0-9[])/gi,
    group: 1,
    check: (v) => !placeholderValue(v),
  },
  {
    // A labelled password: any chosen value (two character classes, 6+ characters) that is no placeholder.
    rule: "password_value",
    re: /(?<![A-Za-z])(?:password|passwd|passphrase|pwd|db[_-]?pass(?:word)?|pass)(?:\\?["'])?\s*[:=]\s*(?:\\?["'])?([^\s"'\\,;&}]{6,128})/gi,
    group: 1,
    check: (v) => !placeholderValue(v) && mixedClasses(v),
  },
];
