import test from "ava";
import { SignJWT } from "jose";
import { createManualClock } from "../../src/common/clock.js";
import { createJwtVerifier, resolveJwtVerifierOptions } from "../../src/identity/jwt/jwt-verifier.js";
import { resolveJwtInvokeOptions, withJwtInvokeGrants } from "../../src/identity/jwt-invoke-grants.js";
import {
  createSpiffePrincipalMapper,
  resolveSpiffePrincipalOptions,
} from "../../src/identity/spiffe-principal-mapper.js";
import { createSilentLogger } from "../../src/telemetry/logger.js";

const SECRET = "an-hs256-secret-of-at-least-32-bytes!!";

test("invoke grants from SPIFFE rules - the default agent rule grants '*', a rule's own list wins, bad grants are refused", (t) => {
  const defaults = createSpiffePrincipalMapper(resolveSpiffePrincipalOptions({}));
  t.deepEqual(defaults.map("spiffe://nops.local/nops/tenant/acme/agent/a1").invoke, ["*"]);
  const narrow = createSpiffePrincipalMapper(
    resolveSpiffePrincipalOptions({
      rules: [
        {
          match: { id: "spiffe://nops.local/nops/tenant/acme/agent/a1" },
          roles: ["AGENT"],
          tenantFromPath: true,
          agentFromPath: true,
          invoke: ["echo", "billing.*"],
        },
        { match: { pathPrefix: "/nops/tenant" }, roles: ["AGENT"], tenantFromPath: true, agentFromPath: true },
      ],
    }),
  );
  t.deepEqual(narrow.map("spiffe://nops.local/nops/tenant/acme/agent/a1").invoke, ["echo", "billing.*"]);
  t.deepEqual(narrow.map("spiffe://nops.local/nops/tenant/acme/agent/a2").invoke, [], "a rule without invoke: none");
  t.throws(
    () =>
      resolveSpiffePrincipalOptions({
        rules: [{ match: { pathPrefix: "/nops/tenant" }, roles: ["AGENT"], tenantFromPath: true, invoke: ["bill*"] }],
      }),
    { message: /identity\.spiffe\.rules\[0\]\.invoke\[0\]/ },
  );
});

test("invoke grants from JWTs - the claim, capped by what the issuer may grant", async (t) => {
  const clock = createManualClock(Date.UTC(2026, 0, 1));
  const raw = {
    issuer: ["https://idp.a", "https://idp.b"],
    audience: "nops",
    algorithms: ["HS256"],
    hmacSecret: SECRET,
    issuerInvoke: { "https://idp.a": ["billing.*", "echo"] },
  };
  const verifier = withJwtInvokeGrants(
    createJwtVerifier({ clock, logger: createSilentLogger() }, resolveJwtVerifierOptions(raw)),
    resolveJwtInvokeOptions(raw, raw.issuer),
  );
  const token = (iss: string, invoke: unknown) =>
    new SignJWT({ tenant: "acme", roles: ["AGENT"], invoke })
      .setProtectedHeader({ alg: "HS256" })
      .setIssuer(iss)
      .setAudience("nops")
      .setSubject("agent-a1")
      .setIssuedAt(clock.now() / 1000)
      .setExpirationTime(clock.now() / 1000 + 600)
      .sign(new TextEncoder().encode(SECRET));
  const capped = await verifier.verify(await token("https://idp.a", ["billing.pay", "*", "payroll.*", "echo", "x*"]));
  t.deepEqual(capped.invoke, ["billing.pay", "echo"], "beyond the issuer's allowance and malformed grants are dropped");
  const unlisted = await verifier.verify(await token("https://idp.b", "payroll.* echo"));
  t.deepEqual(unlisted.invoke, ["payroll.*", "echo"], "an issuer not listed may grant any (space-separated claim)");
  t.deepEqual((await verifier.verify(await token("https://idp.b", undefined))).invoke, [], "no claim: no grants");
  t.throws(() => resolveJwtInvokeOptions({ issuerInvoke: { "https://other": ["*"] } }, raw.issuer), {
    message: /issuerInvoke\.https:\/\/other: not one of identity\.jwt\.issuer/,
  });
});
