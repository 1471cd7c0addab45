import test from "ava";
import { create, toBinary } from "@bufbuild/protobuf";
import { getTextEncoding } from "@bufbuild/protobuf/wire";
import { HandleRequestSchema } from "../../gen/nops/agent/v1/agent_pb.js";
import { useBufferUtf8Encoding } from "../../src/common/index.js";

test("text encoding - protobuf-es encodes strings with Buffer.from, to the same bytes as TextEncoder", (t) => {
  // Lone and paired surrogates, NUL, multi-byte and astral characters, and the empty string.
  const texts = ["", "echo", "é日本語", "😀", "\ud800", "a\udc00b", "\ud83d\ude00\ud83d", "x\u0000y", "\uffff"];
  const message = (text: string) =>
    create(HandleRequestSchema, { invocation: { capability: text, tenant: `t-${text}`, requestId: text, attempt: 1 } });
  const before = texts.map((text) => toBinary(HandleRequestSchema, message(text)));
  t.false(getTextEncoding().encodeUtf8("x") instanceof Buffer);
  useBufferUtf8Encoding();
  t.true(getTextEncoding().encodeUtf8("x") instanceof Buffer);
  texts.forEach((text, i) =>
    t.deepEqual(toBinary(HandleRequestSchema, message(text)), before[i], JSON.stringify(text)),
  );
});
