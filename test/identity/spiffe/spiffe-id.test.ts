import test from "ava";
import { parseSpiffeId, parseTrustDomain, SpiffeIdError } from "../../../src/identity/spiffe/spiffe-id.js";

test("spiffe id - parses trust domain and path", (t) => {
  t.deepEqual(parseSpiffeId("spiffe://nops.local/nops/kernel/edge-1"), {
    id: "spiffe://nops.local/nops/kernel/edge-1",
    trustDomain: "nops.local",
    path: "/nops/kernel/edge-1",
  });
  t.deepEqual(parseSpiffeId("spiffe://nops.local"), { id: "spiffe://nops.local", trustDomain: "nops.local", path: "" });
  t.is(parseTrustDomain("a_b-c.d"), "a_b-c.d");
});

test("spiffe id - rejects what the SPIFFE-ID standard forbids", (t) => {
  for (const bad of [
    "",
    "http://nops.local/x",
    "SPIFFE://nops.local/x",
    "spiffe://",
    "spiffe:///x",
    "spiffe://Nops.local/x",
    "spiffe://nops.local:8080/x",
    "spiffe://user@nops.local/x",
    "spiffe://nops.local/",
    "spiffe://nops.local/a//b",
    "spiffe://nops.local/a/./b",
    "spiffe://nops.local/a/../b",
    "spiffe://nops.local/a?x=1",
    "spiffe://nops.local/a#f",
    "spiffe://nops.local/a b",
    "spiffe://nops.local/%41",
    `spiffe://nops.local/${"a".repeat(2048)}`,
  ]) {
    t.throws(() => parseSpiffeId(bad), { instanceOf: SpiffeIdError }, bad);
  }
});
