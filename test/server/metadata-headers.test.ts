import test from "ava";
import * as grpc from "@grpc/grpc-js";
import { MetadataHeaders } from "../../src/server/metadata-headers.js";

test("metadata headers - read the call's metadata as Headers: any case, repeated values joined, binary as base64", (t) => {
  const md = new grpc.Metadata();
  md.add("x-tenant", "acme");
  md.add("x-multi", "a");
  md.add("x-multi", "b");
  md.add("trace-bin", Buffer.from([0xde, 0xad, 0xbe, 0xef]));
  const h = new MetadataHeaders(md);
  t.is(h.get("X-Tenant"), "acme");
  t.is(h.get("x-multi"), "a, b");
  t.is(h.get("trace-bin"), Buffer.from([0xde, 0xad, 0xbe, 0xef]).toString("base64").replace(/=+$/, ""));
  t.is(h.get("absent"), null);
  t.true(h.has("X-MULTI"));
  t.false(h.has("absent"));
});

test("metadata headers - what is set is the metadata grpc-js sends; the transport's own names are dropped", (t) => {
  const md = new grpc.Metadata();
  const h = new MetadataHeaders(md);
  h.set("X-RateLimit-Limit", " 100\t");
  h.append("x-multi", "a");
  h.append("x-multi", "b");
  h.set("sig-bin", Buffer.from("hello").toString("base64"));
  h.set("grpc-retry-pushback-ms", "250");
  for (const reserved of ["content-type", "te", "grpc-status", "grpc-message", ":status"]) h.set(reserved, "1");
  t.deepEqual(md.get("x-ratelimit-limit"), ["100"], "the name lower-cased, the value trimmed as Headers does");
  t.deepEqual(md.get("x-multi"), ["a", "b"]);
  t.deepEqual(md.get("sig-bin"), [Buffer.from("hello")], "a binary value is sent as its bytes");
  t.deepEqual(md.get("grpc-retry-pushback-ms"), ["250"], "the retry pushback is the one grpc-* a handler sends");
  t.deepEqual(Object.keys(md.toJSON()).sort(), ["grpc-retry-pushback-ms", "sig-bin", "x-multi", "x-ratelimit-limit"]);
  h.set("x-multi", "c");
  t.deepEqual(md.get("x-multi"), ["c"]);
  h.delete("X-Multi");
  t.false(h.has("x-multi"));
});

test("metadata headers - a value gRPC cannot carry is refused when it is set, naming the value", (t) => {
  const h = new MetadataHeaders(new grpc.Metadata());
  t.throws(() => h.set("x-name", "caf\u00e9"), { message: /caf\u00e9.*illegal characters/ });
  t.throws(() => h.set("x name", "v"), { message: /x name.*illegal characters/ });
});

test("metadata headers - iterate as Headers do: names sorted, values joined, set-cookie one by one", (t) => {
  const md = new grpc.Metadata();
  md.add("zeta", "z");
  md.add("alpha", "1");
  md.add("alpha", "2");
  md.add("set-cookie", "a=1");
  md.add("set-cookie", "b=2");
  const h = new MetadataHeaders(md);
  const expected: [string, string][] = [
    ["alpha", "1, 2"],
    ["set-cookie", "a=1"],
    ["set-cookie", "b=2"],
    ["zeta", "z"],
  ];
  t.deepEqual([...h], expected);
  t.deepEqual([...h.keys()], ["alpha", "set-cookie", "set-cookie", "zeta"]);
  t.deepEqual([...h.values()], ["1, 2", "a=1", "b=2", "z"]);
  t.deepEqual(h.getSetCookie(), ["a=1", "b=2"]);
  const seen: string[] = [];
  h.forEach((value, key, parent) => {
    t.is(parent, h);
    seen.push(`${key}=${value}`);
  });
  t.deepEqual(seen, ["alpha=1, 2", "set-cookie=a=1", "set-cookie=b=2", "zeta=z"]);
  t.deepEqual([...new Headers(h)], [...new Headers(expected)], "fetch's Headers copies them");
});
