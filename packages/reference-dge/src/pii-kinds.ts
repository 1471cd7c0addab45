// What the classifier's callers share with it: the kinds it detects, the shape of a detection and the rules'
// version. A module of its own so the DGE server, its policies and the kernel's hub commands read them
// without loading the classifier (its rules, libphonenumber-js's metadata, the HTML entity tables), which
// only the classification worker threads run.

/** The structured types the classifier detects (names used in events, corpus labels and metrics). */
export const PII_KINDS = [
  "email",
  "credit_card",
  "us_ssn",
  "iban",
  "phone",
  "ip_address",
  "api_secret",
  "us_itin",
  "us_passport",
  "uk_nino",
  "mac_address",
  "crypto_wallet",
] as const;
/** One of PII_KINDS. */
export type PiiKind = (typeof PII_KINDS)[number];

/** One detection: kind, UTF-16 span [start, end), confidence and the rule that fired. */
export interface Detection {
  kind: PiiKind;
  start: number;
  end: number;
  confidence: number;
  rule: string;
}

/** Version of the classifier's rules (pii-classifier.ts and detectors/); reported with every classification. */
export const CLASSIFIER_VERSION = "rules-2026.2";
