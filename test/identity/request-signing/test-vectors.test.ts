import test from "ava";
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { create, toBinary } from "@bufbuild/protobuf";
import { InvokeRequestSchema } from "../../../gen/nops/kernel/v1/routing_pb.js";
import {
  buildCanonicalRequest,
  sha256Hex,
  signCanonicalRequest,
} from "../../../src/identity/request-signing/canonical-request.js";

interface Vector {
  name: string;
  keyId: string;
  secretBase64: string;
  method: string;
  path: string;
  timestamp: number;
  nonce: string;
  signedHeaders: Record<string, string>;
  bodyHex: string;
  bodySha256: string;
  canonicalRequest: string;
  signature: string;
}

const doc = readFileSync(fileURLToPath(new URL("../../../docs/signed-requests.md", import.meta.url)), "utf8");
const block = /<!-- test-vectors:begin -->\s*```json\n([\s\S]*?)```\s*<!-- test-vectors:end -->/.exec(doc);
const vectors = JSON.parse(block?.[1] ?? "[]") as Vector[];

test("signed request test vectors - the doc publishes vectors", (t) => {
  t.true(vectors.length >= 2);
  const key = Buffer.from(vectors[0]!.secretBase64, "base64").toString("utf8");
  t.is(key, "nops-test-vector-key-0123456789!");
  // Vector 1's body is the InvokeRequest the doc describes.
  const body = toBinary(
    InvokeRequestSchema,
    create(InvokeRequestSchema, { tenant: "acme", capability: "echo", payload: new TextEncoder().encode("hello") }),
  );
  t.is(Buffer.from(body).toString("hex"), vectors[0]!.bodyHex);
});

for (const [i, v] of vectors.entries()) {
  test(`signed request test vectors - vector ${i + 1} (${v.name}) recomputes`, (t) => {
    const body = Buffer.from(v.bodyHex, "hex");
    t.is(sha256Hex(body), v.bodySha256);
    const canonical = buildCanonicalRequest({
      method: v.method,
      path: v.path,
      keyId: v.keyId,
      timestamp: v.timestamp,
      nonce: v.nonce,
      headers: v.signedHeaders,
      bodySha256: v.bodySha256,
    });
    t.is(canonical, v.canonicalRequest);
    t.is(signCanonicalRequest(Buffer.from(v.secretBase64, "base64"), canonical), v.signature);
  });
}
