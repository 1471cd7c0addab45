import test from "ava";
import { payloadText } from "../../src/egress/payload-text.js";

test("payload text - bytes fields read as text whether Uint8Array or Buffer-backed", (t) => {
  const secret = "mail jane.doe@example.com";
  const asUint8 = { payload: new TextEncoder().encode(secret) };
  // grpc-js hands decoded bytes fields out as Buffers, whose toJSON would hide the text.
  const asBuffer = { payload: Buffer.from(secret) };
  const nested = { request: { inner: [Buffer.from(secret)] } };
  for (const value of [asUint8, asBuffer, nested])
    t.true(payloadText(value).includes("jane.doe@example.com"), JSON.stringify(Object.keys(value)));
  t.is(payloadText(Buffer.from(secret)), secret);
  t.is(payloadText({ n: 12n }), '{"n":"12"}');
});
