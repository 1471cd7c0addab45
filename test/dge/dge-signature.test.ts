import test from "ava";
import { createManualClock } from "../../src/common/clock.js";
import { createDgeSignatureVerifier, DgeSignatureError } from "../../src/egress/index.js";
import { signDgeResponse } from "../../packages/reference-dge/src/index.js";

const key = { id: "k1", secret: "test-dge-signing-key-0123456789abcdef" };
const body = new TextEncoder().encode("verdict: allow");
const method = "/nops.dge.v1.DataGovernanceService/ValidateEgress";

function reason(fn: () => void): string {
  try {
    fn();
    return "accepted";
  } catch (e) {
    return e instanceof DgeSignatureError ? e.reason : String(e);
  }
}

test("dge signature - a fresh, correctly signed response is accepted", (t) => {
  const clock = createManualClock();
  const v = createDgeSignatureVerifier({ k1: key.secret }, clock);
  t.is(
    reason(() => v.verify(signDgeResponse(key, method, body, clock.now()), method, body)),
    "accepted",
  );
});

test("dge signature - wrong key, unknown key id, tampered body and another method are rejected", (t) => {
  const clock = createManualClock();
  const v = createDgeSignatureVerifier({ k1: key.secret }, clock);
  t.is(
    reason(() =>
      v.verify(
        signDgeResponse({ id: "k1", secret: "another-key-of-the-same-length-000000" }, method, body, clock.now()),
        method,
        body,
      ),
    ),
    "bad_signature",
  );
  t.is(
    reason(() => v.verify(signDgeResponse({ id: "k9", secret: key.secret }, method, body, clock.now()), method, body)),
    "unknown_key",
  );
  t.is(
    reason(() =>
      v.verify(signDgeResponse(key, method, body, clock.now()), method, new TextEncoder().encode("verdict: deny")),
    ),
    "bad_signature",
  );
  t.is(
    reason(() =>
      v.verify(signDgeResponse(key, method, body, clock.now()), "/nops.dge.v1.DataGovernanceService/Classify", body),
    ),
    "bad_signature",
  );
  t.is(
    reason(() => v.verify(null, method, body)),
    "missing",
  );
  t.is(
    reason(() => v.verify("keyId=k1,sig=zz", method, body)),
    "malformed",
  );
});

test("dge signature - clock skew over 5 minutes either way is rejected, 5 minutes is not", (t) => {
  const clock = createManualClock();
  const v = createDgeSignatureVerifier({ k1: key.secret }, clock);
  const now = clock.now();
  t.is(
    reason(() => v.verify(signDgeResponse(key, method, body, now - 300_001), method, body)),
    "clock_skew",
  );
  t.is(
    reason(() => v.verify(signDgeResponse(key, method, body, now + 300_001), method, body)),
    "clock_skew",
  );
  t.is(
    reason(() => v.verify(signDgeResponse(key, method, body, now - 300_000), method, body)),
    "accepted",
  );
});

test("dge signature - a replayed nonce is rejected", (t) => {
  const clock = createManualClock();
  const v = createDgeSignatureVerifier({ k1: key.secret }, clock);
  const header = signDgeResponse(key, method, body, clock.now());
  t.is(
    reason(() => v.verify(header, method, body)),
    "accepted",
  );
  t.is(
    reason(() => v.verify(header, method, body)),
    "replayed_nonce",
  );
  clock.advance(4 * 60_000);
  t.is(
    reason(() => v.verify(header, method, body)),
    "replayed_nonce",
  );
  // Once the nonce is forgotten the timestamp is too old anyway.
  clock.advance(7 * 60_000);
  t.is(
    reason(() => v.verify(header, method, body)),
    "clock_skew",
  );
});
