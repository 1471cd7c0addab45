import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import test, { type ExecutionContext } from "ava";
import { SignJWT, exportJWK, generateKeyPair, type CryptoKey, type JWK } from "jose";
import { Code, ConnectError } from "@connectrpc/connect";
import { AgentRegistryService } from "../../gen/nops/kernel/v1/agent_registry_pb.js";
import { BOTH, startTestKernel } from "../helpers/kernel.js";
import { systemClock } from "../../src/common/clock.js";
import { createDgeClient } from "../../src/clients/dge-client.js";
import { createEgressGuard, resolveEgressGuardOptions } from "../../src/egress/egress-guard.js";
import { DGE_KEYS, makeMeter, makeStore, silent } from "../fixtures/dge-helpers.js";

// Issue 13 item 15: a kernel configured with a JWKS issuer fetches the JWKS through its Egress
// Guard, the guard allows it (configured destination, no tenant), and RS256/ES256 tokens work.

const ISS = "https://idp.test";
const AUD = "nops-kernel";

interface SigningKey {
  privateKey: CryptoKey;
  jwk: JWK;
  alg: "RS256" | "ES256";
}

async function signingKey(alg: "RS256" | "ES256", kid: string): Promise<SigningKey> {
  const pair = await generateKeyPair(alg);
  return { privateKey: pair.privateKey, alg, jwk: { ...(await exportJWK(pair.publicKey)), kid, alg, use: "sig" } };
}

function token(key: SigningKey): Promise<string> {
  const now = Math.floor(Date.now() / 1000);
  return new SignJWT({ tenant: "acme", roles: ["OPERATOR"], scope: "registry/read" })
    .setProtectedHeader({ alg: key.alg, kid: key.jwk.kid! })
    .setIssuer(ISS)
    .setAudience(AUD)
    .setSubject("operator-1")
    .setIssuedAt(now)
    .setExpirationTime(now + 300)
    .sign(key.privateKey);
}

/** A test-owned IdP on loopback serving whatever keys the test puts in `keys`. */
async function startJwksServer(t: ExecutionContext, keys: JWK[]) {
  let served = 0;
  const server = createServer((req, res) => {
    served++;
    res.writeHead(200, { "content-type": "application/json" });
    res.end(JSON.stringify({ keys }));
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  t.teardown(() => new Promise<void>((resolve) => server.close(() => resolve())));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/jwks.json`, served: () => served };
}

test("jwks - RS256 and ES256 tokens from a JWKS issuer authenticate on both ports, and a new kid is picked up", async (t) => {
  const rsa = await signingKey("RS256", "rsa-1");
  const ec = await signingKey("ES256", "ec-1");
  const keys: JWK[] = [rsa.jwk, ec.jwk];
  const idp = await startJwksServer(t, keys);
  const k = await startTestKernel(t, {
    authn: { allowAnonymous: false },
    identity: {
      source: "none",
      jwt: { issuer: ISS, audience: AUD, jwksUrl: idp.url, jwksCooldownMs: 0 },
    },
  });
  for (const transport of BOTH) {
    const client = k.client(AgentRegistryService, transport);
    for (const key of [rsa, ec]) {
      const res = await client.listAgents(
        { tenant: "acme" },
        { headers: { authorization: `Bearer ${await token(key)}` } },
      );
      t.deepEqual(res.agents, [], `${key.alg} over ${transport}`);
    }
  }
  t.true(idp.served() >= 1);
  // The IdP rotates: a new key with a new kid. The kernel fetches the JWKS again for the unknown kid.
  const rotated = await signingKey("ES256", "ec-2");
  keys.splice(0, keys.length, rotated.jwk);
  for (const transport of BOTH) {
    const client = k.client(AgentRegistryService, transport);
    const res = await client.listAgents(
      { tenant: "acme" },
      { headers: { authorization: `Bearer ${await token(rotated)}` } },
    );
    t.deepEqual(res.agents, [], `rotated key over ${transport}`);
  }
  // A token signed by a key the IdP never published is still refused.
  const stranger = await signingKey("RS256", "rsa-1");
  const err = await t.throwsAsync(
    k
      .client(AgentRegistryService, "connect-json")
      .listAgents({ tenant: "acme" }, { headers: { authorization: `Bearer ${await token(stranger)}` } }),
  );
  t.is(ConnectError.from(err).code, Code.Unauthenticated);
});

test("jwks - the guard allows a call with no tenant only to the configured kernel destination", (t) => {
  const store = makeStore();
  const guard = createEgressGuard(
    {
      clock: systemClock,
      logger: silent,
      meter: makeMeter().provider.getMeter("test"),
      // Never reached: every decision below is taken without I/O.
      dge: createDgeClient(
        { clock: systemClock },
        { url: "http://127.0.0.1:9", protocol: "grpc", keys: DGE_KEYS, maxSkewMs: 300_000 },
      ),
      events: store.events,
      audit: store.audit,
      db: store.db,
      kernelDestinations: ["jwks:https://idp.test/jwks.json"],
    },
    resolveEgressGuardOptions({}),
  );
  t.teardown(() => guard.close());
  const call = (tenant: string, destination: string) =>
    guard.checkNow({ tenant, transport: "http", destination, dataType: "", payload: "/jwks.json\n" });
  t.like(call("", "jwks:https://idp.test/jwks.json"), { allowed: true, reason: "kernel_destination" });
  t.like(call("", "jwks:https://evil.test/jwks.json"), { allowed: false, reason: "invalid_tenant" });
  t.like(call("", "observability:https://idp.test/jwks.json"), { allowed: false, reason: "invalid_tenant" });
  // A tenant's data to the same place is judged as usual (here: the DGE would have to be asked).
  t.is(call("acme", "jwks:https://idp.test/jwks.json"), undefined);
});
