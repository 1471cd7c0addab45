import { randomUUID } from "node:crypto";
import test from "ava";
import { create, toBinary, toJsonString } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { AgentSchema } from "../../gen/nops/kernel/v1/agent_registry_pb.js";
import { AgentRegisteredSchema } from "../../gen/nops/events/v1/agent_events_pb.js";
import { EgressClass, Verdict } from "../../gen/nops/dge/v1/dge_pb.js";
import { detectPii } from "../../packages/reference-dge/src/pii-classifier.js";
import type { PiiKind } from "../../packages/reference-dge/src/pii-kinds.js";
import { DEFAULT_NORMALISE_LIMITS, normalisedViews } from "../../packages/reference-dge/src/normalise.js";
import { classificationOf } from "../../packages/reference-dge/src/dge-service.js";
import { evaluatePolicy, policyFor, resolveDgePoliciesOptions } from "../../packages/reference-dge/src/dge-policies.js";
import { bytesText } from "../../src/egress/payload-text.js";

const kinds = (text: string): PiiKind[] => detectPii(text).map((d) => d.kind);
// What the DGE answers for `text`: a worker thread's detections, classified.
const classifyText = (text: string) => classificationOf(text, detectPii(text));

// ---- item 4: every encoding is seen through, and the span points at the encoded characters

const CARD = "4111 1111 1111 1111";
const SSN = "536-22-1234";
const EMAIL = "anna.smith@example.com";
const cases: [string, string, PiiKind][] = [
  ["base64", `data=${Buffer.from(`ssn ${SSN}`).toString("base64")}`, "us_ssn"],
  ["base64url", `state=${Buffer.from(JSON.stringify({ email: EMAIL })).toString("base64url")}`, "email"],
  [
    "base64 in base64",
    `x=${Buffer.from(`inner ${Buffer.from(`card ${CARD}`).toString("base64")}`).toString("base64")}`,
    "credit_card",
  ],
  ["percent", `q=anna.smith%40example.com`, "email"],
  ["percent with +", `GET /find?q=card+number+4111+1111+1111+1111`, "credit_card"],
  ["double percent", `next=anna.smith%2540example%252Ecom`, "email"],
  ["HTML numeric entities", `<td>&#53;36&#x2d;22&#45;1234</td>`, "us_ssn"],
  ["HTML named entities", `anna.smith&commat;example&period;com`, "email"],
  ["\\u escapes", `{"ssn":"\\u0035\\u00336-22-1234"}`, "us_ssn"],
  [
    "UTF-16LE with BOM",
    `b=${Buffer.concat([Buffer.from([0xff, 0xfe]), Buffer.from(`card ${CARD}`, "utf16le")]).toString("base64")}`,
    "credit_card",
  ],
  ["UTF-16BE", `b=${Buffer.from(Buffer.from(`mail ${EMAIL}`, "utf16le").swap16()).toString("base64")}`, "email"],
  ["UTF-16 read as bytes", `ssn ${[...SSN].map((c) => `${c}\u0000`).join("")}`, "us_ssn"],
  ["full-width", "ｃａｒｄ ４１１１ １１１１ １１１１ １１１１", "credit_card"],
  ["NBSP and thin spaces", "card 4111\u00a01111\u20091111\u202f1111", "credit_card"],
  ["zero-width characters", "ssn 5\u200b36-2\u200d2-12\u20603\ufeff4", "us_ssn"],
  ["en dashes", "ssn 536\u201322\u20131234", "us_ssn"],
  ["split across a newline", "iban DE89 3704 0044\n0532 0130 00 for the refund", "iban"],
  ["split inside a word", "contact anna.smi\nth@example.com today", "email"],
];
for (const [name, text, kind] of cases) {
  test(`normalise - ${name} is seen through`, (t) => {
    const found = detectPii(text).filter((d) => d.kind === kind);
    t.is(found.length, 1, JSON.stringify(detectPii(text)));
    const d = found[0]!;
    t.true(d.start >= 0 && d.end <= text.length && d.start < d.end);
    // The span covers characters of the input that carried the value, never the label in front.
    t.false(/^(?:data|state|x|q|b|ssn|card|iban|contact)=?\s/.test(text.slice(d.start, d.end)));
  });
}

test("normalise - a folded view maps spans back onto the original characters", (t) => {
  const text = "card ４１１１\u00a0１１１１ １１１１ １１１１ end";
  const [d] = detectPii(text);
  t.is(text.slice(d!.start, d!.end), "４１１１\u00a0１１１１ １１１１ １１１１");
});

test("normalise - plain text makes no extra view", (t) => {
  t.is(normalisedViews("plain ascii text without encodings").length, 1);
});

// ---- item 4: the work is bounded

test("normalise - nested base64 stops at maxDepth", (t) => {
  let payload = `ssn ${SSN}`;
  for (let i = 0; i < 40; i++) payload = Buffer.from(`layer ${payload}`).toString("base64");
  const views = normalisedViews(payload);
  t.true(views.length <= DEFAULT_NORMALISE_LIMITS.maxViews);
  t.true(
    views
      .filter((v) => v.via.includes("base64"))
      .every((v) => v.via.filter((s) => s === "base64").length < DEFAULT_NORMALISE_LIMITS.maxDepth),
  );
  t.deepEqual(kinds(payload), []);
  // Within the depth, the same value is found.
  let shallow = `ssn ${SSN}`;
  for (let i = 0; i < 2; i++) shallow = Buffer.from(`layer ${shallow}`).toString("base64");
  t.deepEqual(kinds(shallow), ["us_ssn"]);
});

test("normalise - deep percent-encoding stops at maxDepth", (t) => {
  let payload = EMAIL;
  for (let i = 0; i < 200; i++) payload = payload.replace(/%/g, "%25").replace(/@/g, "%40");
  const views = normalisedViews(`q=${payload}`);
  t.true(views.length <= DEFAULT_NORMALISE_LIMITS.maxViews);
  t.deepEqual(kinds(`q=${payload}`), []);
});

test("normalise - total view size is capped by the budget on a large encoded payload", (t) => {
  const chunk = Buffer.from(`row ${randomUUID()} ok\n`.repeat(20)).toString("base64");
  const text = Array.from({ length: 200 }, () => chunk).join(" ");
  const views = normalisedViews(text);
  const total = views.reduce((n, v) => n + v.text.length, 0);
  t.true(views.length <= DEFAULT_NORMALISE_LIMITS.maxViews);
  t.true(total <= text.length * DEFAULT_NORMALISE_LIMITS.budgetFactor + 4096, `total ${total}`);
});

// ---- item 9: kernel identifiers and agent endpoints

test("item 9 - none of 100,000 random UUIDs is flagged, bare or in a log line", (t) => {
  const flagged: string[] = [];
  for (let i = 0; i < 100_000; i++) {
    const id = randomUUID();
    const text = i % 2 === 0 ? id : `request_id=${id.toUpperCase()} status=ok`;
    if (detectPii(text).length > 0) flagged.push(text);
  }
  t.deepEqual(flagged, []);
});

test("item 9 - hex ids (trace ids, hashes) are not cards or IBANs", (t) => {
  t.deepEqual(kinds(`trace 4111111111111111${"a".repeat(16)}`), []);
  t.deepEqual(kinds(`sha256 ${"0".repeat(8)}4111111111111111${"e".repeat(40)}`), []);
  // The same card outside an id is still found.
  t.deepEqual(kinds("card 4111111111111111"), ["credit_card"]);
});

function registration(endpoint: string): { json: string; wire: string } {
  const agent = create(AgentSchema, {
    id: randomUUID(),
    tenant: "acme",
    name: "summarizer",
    version: "1.0.0",
    endpoint,
    capabilities: [{ name: "summarize", version: "1.0" }],
    registeredAt: timestampFromMs(Date.UTC(2026, 11, 1, 17, 0, 0)),
    revision: 1n,
  });
  const event = create(AgentRegisteredSchema, { agent });
  return { json: toJsonString(AgentRegisteredSchema, event), wire: bytesText(toBinary(AgentRegisteredSchema, event)) };
}

for (const endpoint of [
  "10.0.0.7:7000",
  "127.0.0.1:50061",
  "https://192.168.1.20:8443",
  "[fd00::7]:7000",
  "[::1]:50061",
]) {
  test(`item 9 - a registration event with endpoint ${endpoint} is D1 and allowed on the default tier`, (t) => {
    const policies = resolveDgePoliciesOptions({});
    for (const text of Object.values(registration(endpoint))) {
      const c = classifyText(text);
      t.is(c.egressClass, EgressClass.D1, text);
      t.deepEqual(c.findings, []);
      for (const tier of [1, 2, 3] as const) {
        const decision = evaluatePolicy(policyFor(policies, "acme", tier), tier, c, "nats:hub");
        t.true(decision.allow, `${tier}: ${decision.reason}`);
      }
    }
  });
}

test("item 9 - a public address is still an ip_address finding (D2), blocked by the default policy", (t) => {
  const c = classifyText(registration("203.0.114.9:7000").json);
  t.is(c.egressClass, EgressClass.D2);
  const decision = evaluatePolicy(policyFor(resolveDgePoliciesOptions({}), "acme", 1), 1, c, "nats:hub");
  t.false(decision.allow);
  t.is(Verdict.DENY, decision.allow ? Verdict.ALLOW : Verdict.DENY);
});

test("normalise - a 1 MiB payload with 80,000 findings, plain and percent-encoded, yields each once", (t) => {
  const emails = Array.from({ length: 40_000 }, (_, i) => `u${i}@example.com`);
  const text = `${emails.join(" ")} ${emails.map((e) => e.replace("@", "%40")).join(" ")}`;
  t.true(text.length > 1_000_000);
  const found = detectPii(text);
  t.is(found.length, 80_000);
  t.true(found.every((d) => d.kind === "email"));
});
