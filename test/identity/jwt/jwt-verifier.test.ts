import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import test from "ava";
import { SignJWT, exportJWK, generateKeyPair, type CryptoKey, type JWK } from "jose";
import { createManualClock } from "../../../src/common/clock.js";
import { CredentialError } from "../../../src/identity/principal.js";
import {
  createJwtVerifier,
  resolveJwtVerifierOptions,
  type JwtVerifierOptions,
} from "../../../src/identity/jwt/jwt-verifier.js";
import { createSilentLogger } from "../../../src/telemetry/logger.js";

const ISS = "https://idp.example";
const AUD = "nops-kernel";
const SECRET = "a-hs256-secret-that-is-at-least-32-bytes!";
const clock = createManualClock(Date.UTC(2026, 0, 1));
const nowSec = () => Math.floor(clock.now() / 1000);

interface Keys {
  rsa: { privateKey: CryptoKey; jwk: JWK };
  ec: { privateKey: CryptoKey; jwk: JWK };
}

async function keys(): Promise<Keys> {
  const rsa = await generateKeyPair("RS256");
  const ec = await generateKeyPair("ES256");
  return {
    rsa: {
      privateKey: rsa.privateKey,
      jwk: { ...(await exportJWK(rsa.publicKey)), kid: "rsa-1", alg: "RS256", use: "sig" },
    },
    ec: {
      privateKey: ec.privateKey,
      jwk: { ...(await exportJWK(ec.publicKey)), kid: "ec-1", alg: "ES256", use: "sig" },
    },
  };
}

function sign(claims: Record<string, unknown>, alg: string, key: CryptoKey | Uint8Array, kid?: string) {
  const jwt = new SignJWT({
    tenant: "acme",
    roles: ["OPERATOR"],
    scope: "registry/read registry/write/acme",
    ...claims,
  })
    .setProtectedHeader(kid ? { alg, kid } : { alg })
    .setIssuer(ISS)
    .setAudience(AUD)
    .setSubject("user-1")
    .setIssuedAt(nowSec())
    .setExpirationTime(nowSec() + 600);
  return jwt.sign(key);
}

function verifier(input: Record<string, unknown>, fetchCount?: { n: number }) {
  const options: JwtVerifierOptions = resolveJwtVerifierOptions({ issuer: ISS, audience: AUD, ...input });
  return createJwtVerifier(
    {
      clock,
      logger: createSilentLogger(),
      ...(fetchCount ? { fetch: async (url, init) => (fetchCount.n++, fetch(url, init)) } : {}),
    },
    options,
  );
}

async function rejected(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (e) {
    if (e instanceof CredentialError) return e.message;
    throw e;
  }
  throw new Error("token was accepted");
}

const hmac = new TextEncoder().encode(SECRET);

test("jwt - valid HS256, RS256 and ES256 tokens are accepted and mapped to a principal", async (t) => {
  const k = await keys();
  const v = verifier({
    algorithms: ["HS256", "RS256", "ES256"],
    hmacSecret: SECRET,
    jwks: { keys: [k.rsa.jwk, k.ec.jwk] },
  });
  for (const token of [
    await sign({}, "HS256", hmac),
    await sign({}, "RS256", k.rsa.privateKey, "rsa-1"),
    await sign({}, "ES256", k.ec.privateKey, "ec-1"),
  ]) {
    const p = await v.verify(token);
    t.like(p, { kind: "jwt", id: "jwt:user-1", tenant: "acme", roles: ["OPERATOR"] });
    t.deepEqual(p.scopes, ["registry/read", "registry/write/acme"]);
  }
});

test("jwt - scp is used when scope is absent; unknown roles are dropped", async (t) => {
  const v = verifier({ algorithms: ["HS256"], hmacSecret: SECRET });
  const p = await v.verify(
    await sign({ scope: undefined, scp: ["registry/read"], roles: ["VIEWER", "ROOT"] }, "HS256", hmac),
  );
  t.deepEqual(p.scopes, ["registry/read"]);
  t.deepEqual(p.roles, ["VIEWER"]);
});

test("jwt - wrong audience, wrong issuer, expired and not-yet-valid tokens are rejected", async (t) => {
  const v = verifier({ algorithms: ["HS256"], hmacSecret: SECRET, clockToleranceSec: 30 });
  const wrongAud = await new SignJWT({})
    .setProtectedHeader({ alg: "HS256" })
    .setIssuer(ISS)
    .setAudience("someone-else")
    .setSubject("u")
    .setExpirationTime(nowSec() + 60)
    .sign(hmac);
  t.regex(await rejected(v.verify(wrongAud)), /audience is not this service/);
  const wrongIss = await new SignJWT({})
    .setProtectedHeader({ alg: "HS256" })
    .setIssuer("https://evil")
    .setAudience(AUD)
    .setSubject("u")
    .setExpirationTime(nowSec() + 60)
    .sign(hmac);
  t.regex(await rejected(v.verify(wrongIss)), /ERR_JWT_CLAIM_VALIDATION_FAILED/);
  const expired = await new SignJWT({})
    .setProtectedHeader({ alg: "HS256" })
    .setIssuer(ISS)
    .setAudience(AUD)
    .setSubject("u")
    .setExpirationTime(nowSec() - 31)
    .sign(hmac);
  t.regex(await rejected(v.verify(expired)), /ERR_JWT_EXPIRED/);
  const future = await new SignJWT({})
    .setProtectedHeader({ alg: "HS256" })
    .setIssuer(ISS)
    .setAudience(AUD)
    .setSubject("u")
    .setNotBefore(nowSec() + 120)
    .setExpirationTime(nowSec() + 600)
    .sign(hmac);
  t.regex(await rejected(v.verify(future)), /ERR_JWT_CLAIM_VALIDATION_FAILED/);
  // The same not-yet-valid token is accepted once the (manual) clock reaches nbf.
  const later = createJwtVerifier(
    { clock: createManualClock(clock.now() + 120_000), logger: createSilentLogger() },
    resolveJwtVerifierOptions({ issuer: ISS, audience: AUD, algorithms: ["HS256"], hmacSecret: SECRET }),
  );
  await t.notThrowsAsync(later.verify(future));
  const noExp = await new SignJWT({})
    .setProtectedHeader({ alg: "HS256" })
    .setIssuer(ISS)
    .setAudience(AUD)
    .setSubject("u")
    .sign(hmac);
  t.regex(await rejected(v.verify(noExp)), /ERR_JWT_CLAIM_VALIDATION_FAILED/);
});

test("jwt - algorithms outside the pinned list are rejected, including alg none", async (t) => {
  const k = await keys();
  const rsOnly = verifier({ algorithms: ["RS256"], jwks: { keys: [k.rsa.jwk, k.ec.jwk] } });
  t.regex(await rejected(rsOnly.verify(await sign({}, "ES256", k.ec.privateKey, "ec-1"))), /ERR_JOSE_ALG_NOT_ALLOWED/);
  t.regex(await rejected(rsOnly.verify(await sign({}, "HS256", hmac))), /ERR_JOSE_ALG_NOT_ALLOWED/);
  const header = Buffer.from(JSON.stringify({ alg: "none" })).toString("base64url");
  const body = Buffer.from(JSON.stringify({ iss: ISS, aud: AUD, sub: "u", exp: nowSec() + 60 })).toString("base64url");
  t.regex(await rejected(rsOnly.verify(`${header}.${body}.`)), /jwt rejected: ERR_/);
});

test("jwt - a bad signature and a tenant claim that is not a tenant id are rejected", async (t) => {
  const v = verifier({ algorithms: ["HS256"], hmacSecret: SECRET });
  const other = await sign({}, "HS256", new TextEncoder().encode("another-secret-of-at-least-32-bytes-long"));
  t.regex(await rejected(v.verify(other)), /ERR_JWS_SIGNATURE_VERIFICATION_FAILED/);
  t.regex(await rejected(v.verify(await sign({ tenant: "../etc" }, "HS256", hmac))), /tenant/);
  t.regex(await rejected(v.verify("not.a.jwt")), /jwt rejected/);
});

test("jwt - the JWKS is fetched from its URL once and then served from cache", async (t) => {
  const k = await keys();
  let served = 0;
  const server: Server = createServer((req, res) => {
    served++;
    res.writeHead(200, { "content-type": "application/json" });
    res.end(JSON.stringify({ keys: [k.rsa.jwk, k.ec.jwk] }));
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  t.teardown(() => new Promise<void>((resolve) => server.close(() => resolve())));
  const port = (server.address() as AddressInfo).port;
  const fetches = { n: 0 };
  const v = verifier({ algorithms: ["RS256", "ES256"], jwksUrl: `http://127.0.0.1:${port}/jwks.json` }, fetches);
  for (let i = 0; i < 5; i++) {
    await v.verify(await sign({}, "RS256", k.rsa.privateKey, "rsa-1"));
    await v.verify(await sign({}, "ES256", k.ec.privateKey, "ec-1"));
  }
  t.is(served, 1);
  t.is(fetches.n, 1, "the injected fetch was used");
  // An unknown kid within the cooldown does not hammer the IdP.
  await rejected(v.verify(await sign({}, "RS256", k.rsa.privateKey, "rsa-unknown")));
  t.is(served, 1);
});

test("jwt - options: bad input names the field", (t) => {
  t.throws(() => resolveJwtVerifierOptions({ audience: AUD }), { message: /identity\.jwt\.issuer/ });
  t.throws(() => resolveJwtVerifierOptions({ issuer: ISS }), { message: /identity\.jwt\.audience/ });
  t.throws(() => resolveJwtVerifierOptions({ issuer: ISS, audience: AUD, algorithms: ["none"] }), {
    message: /identity\.jwt\.algorithms\[0\]/,
  });
  t.throws(
    () => resolveJwtVerifierOptions({ issuer: ISS, audience: AUD, algorithms: ["HS256"], hmacSecret: "short" }),
    { message: /identity\.jwt\.hmacSecret/ },
  );
  t.throws(() => resolveJwtVerifierOptions({ issuer: ISS, audience: AUD, algorithms: ["HS256"] }), {
    message: /identity\.jwt\.hmacSecret/,
  });
  t.throws(() => resolveJwtVerifierOptions({ issuer: ISS, audience: AUD }), { message: /identity\.jwt\.jwksUrl/ });
  t.throws(() => resolveJwtVerifierOptions({ issuer: ISS, audience: AUD, jwksUrl: "http://idp.example/jwks" }), {
    message: /identity\.jwt\.jwksUrl must be https/,
  });
  t.throws(
    () => resolveJwtVerifierOptions({ issuer: ISS, audience: AUD, clockToleranceSec: -1, jwks: { keys: [{}] } }),
    { message: /identity\.jwt\.clockToleranceSec/ },
  );
});

test("jwt - an iat in the future and a lifetime over the cap are rejected", async (t) => {
  const v = verifier({ algorithms: ["HS256"], hmacSecret: SECRET, clockToleranceSec: 30, maxLifetimeSec: 3600 });
  const sign = (iat: number | undefined, exp: number) => {
    const jwt = new SignJWT({}).setProtectedHeader({ alg: "HS256" }).setIssuer(ISS).setAudience(AUD).setSubject("u");
    if (iat !== undefined) jwt.setIssuedAt(iat);
    return jwt.setExpirationTime(exp).sign(hmac);
  };
  t.regex(await rejected(v.verify(await sign(nowSec() + 120, nowSec() + 600))), /iat is in the future/);
  t.regex(await rejected(v.verify(await sign(nowSec(), nowSec() + 7200))), /lifetime over 3600 s/);
  t.regex(await rejected(v.verify(await sign(undefined, nowSec() + 7200))), /lifetime over 3600 s/);
  // Within the tolerance and the cap: accepted.
  t.like(await v.verify(await sign(nowSec() + 10, nowSec() + 3600)), { id: "jwt:u" });
});

test("jwt - a roles claim grants only what the issuer may grant (SUPER_ADMIN never by default)", async (t) => {
  const sign = (roles: string[]) =>
    new SignJWT({ roles })
      .setProtectedHeader({ alg: "HS256" })
      .setIssuer(ISS)
      .setAudience(AUD)
      .setSubject("u")
      .setExpirationTime(nowSec() + 60)
      .sign(hmac);
  const byDefault = verifier({ algorithms: ["HS256"], hmacSecret: SECRET });
  t.deepEqual((await byDefault.verify(await sign(["SUPER_ADMIN", "ADMIN", "VIEWER"]))).roles, ["ADMIN", "VIEWER"]);
  const bounded = verifier({ algorithms: ["HS256"], hmacSecret: SECRET, issuerRoles: { [ISS]: ["VIEWER"] } });
  t.deepEqual((await bounded.verify(await sign(["SUPER_ADMIN", "ADMIN", "VIEWER"]))).roles, ["VIEWER"]);
  t.throws(
    () =>
      resolveJwtVerifierOptions({
        issuer: ISS,
        audience: AUD,
        algorithms: ["HS256"],
        hmacSecret: "s".repeat(32),
        issuerRoles: { "https://other": ["VIEWER"] },
      }),
    {
      message: /issuerRoles\.https:\/\/other: not one of identity\.jwt\.issuer/,
    },
  );
});
