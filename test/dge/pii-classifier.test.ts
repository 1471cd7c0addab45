import { readFileSync } from "node:fs";
import test from "ava";
import { detectPii } from "../../packages/reference-dge/src/pii-classifier.js";
import { PII_KINDS } from "../../packages/reference-dge/src/pii-kinds.js";
import { cardBrand, ibanValid, luhnValid, ssnValid } from "../../packages/reference-dge/src/checksums.js";

interface Sample {
  id: string;
  type: string;
  form: string;
  labels: string[];
  text: string;
}

const corpus = JSON.parse(readFileSync(new URL("../fixtures/pii-corpus.json", import.meta.url), "utf8")) as Sample[];

test("pii classifier - recall >= 97% and false-positive rate <= 1% per structured type over the labelled corpus", (t) => {
  const predicted = corpus.map((s) => new Set(detectPii(s.text).map((d) => d.kind)));
  const rows: string[] = ["type          TP    FN    FP    TN   recall  fp-rate"];
  const misses: string[] = [];
  const failures: string[] = [];
  for (const kind of PII_KINDS) {
    let tp = 0,
      fn = 0,
      fp = 0,
      tn = 0;
    corpus.forEach((s, i) => {
      const actual = s.labels.includes(kind);
      const got = predicted[i]?.has(kind) ?? false;
      if (actual && got) tp++;
      else if (actual) {
        fn++;
        misses.push(`FN ${kind} ${s.id} ${JSON.stringify(s.text)}`);
      } else if (got) {
        fp++;
        misses.push(`FP ${kind} ${s.id} ${JSON.stringify(s.text)}`);
      } else tn++;
    });
    const recall = tp / (tp + fn);
    const fpRate = fp / (fp + tn);
    rows.push(
      `${kind.padEnd(12)} ${String(tp).padStart(4)}  ${String(fn).padStart(4)}  ${String(fp).padStart(4)}  ${String(tn).padStart(4)}   ${(recall * 100).toFixed(2).padStart(6)}%  ${(fpRate * 100).toFixed(2).padStart(5)}%`,
    );
    if (tp + fn < 300) failures.push(`${kind}: ${tp + fn} positives, at least 300 wanted`);
    if (recall < 0.97) failures.push(`${kind}: recall ${recall}`);
    if (fpRate > 0.01) failures.push(`${kind}: false-positive rate ${fpRate}`);
  }
  // Negatives (look-alikes and clean text) carry no label: any finding on one is a false positive.
  const negatives = corpus.filter((s) => s.labels.length === 0);
  const flagged = negatives.filter((s) => (predicted[corpus.indexOf(s)]?.size ?? 0) > 0);
  const negativeFpRate = flagged.length / negatives.length;
  rows.push(`negatives flagged: ${flagged.length} of ${negatives.length} (${(negativeFpRate * 100).toFixed(2)}%)`);
  if (negativeFpRate > 0.01) failures.push(`false-positive rate on negatives ${negativeFpRate}`);
  t.log(`confusion matrix over ${corpus.length} samples\n${rows.join("\n")}`);
  if (misses.length) t.log(misses.slice(0, 60).join("\n"));
  t.deepEqual(failures, []);
});

test("pii classifier - spans point at the matched value and confidence is in (0, 1]", (t) => {
  const text = "mail anna.smith@example.com card 4111 1111 1111 1111 ssn 536-22-1234";
  const found = detectPii(text);
  t.deepEqual(
    found.map((d) => d.kind),
    ["email", "credit_card", "us_ssn"],
  );
  t.deepEqual(
    found.map((d) => text.slice(d.start, d.end)),
    ["anna.smith@example.com", "4111 1111 1111 1111", "536-22-1234"],
  );
  for (const d of found) t.true(d.confidence > 0 && d.confidence <= 1);
});

test("checksums - Luhn, card brands, SSA area rules and IBAN mod-97", (t) => {
  t.true(luhnValid("4111111111111111"));
  t.false(luhnValid("4111111111111112"));
  t.is(cardBrand("378282246310005"), "amex");
  t.is(cardBrand("9111111111111111"), undefined);
  t.true(ssnValid("536", "22", "1234"));
  t.false(ssnValid("666", "22", "1234"));
  t.false(ssnValid("900", "22", "1234"));
  t.false(ssnValid("000", "22", "1234"));
  t.true(ibanValid("DE89370400440532013000"));
  t.false(ibanValid("DE89370400440532013001"));
  t.true(ibanValid("GB82WEST12345698765432"));
});
