import { join } from "node:path";
import test, { type ExecutionContext } from "ava";
import Database from "better-sqlite3";
import { SignJWT } from "jose";
import { Code, ConnectError } from "@connectrpc/connect";
import { AgentRegistryService } from "../../gen/nops/kernel/v1/agent_registry_pb.js";
import { EventBusService } from "../../gen/nops/kernel/v1/event_bus_pb.js";
import { BOTH, startTestKernel, type TestKernel, type TransportName } from "../helpers/kernel.js";

// Issue 13 items 12 and 19 replayed against a whole running kernel over both transports (the
// units are tested in test/ratelimit and test/identity/jwt): a caller spends its own tenant's
// quota whatever tenant it names, an invalid tenant never reaches the outbox, and JWT claims are
// held to audience, lifetime, iat and the roles its issuer may grant.

const ISS = "https://idp.test";
const LIMITED = "https://limited.idp.test";
const AUD = "nops-kernel";
const SECRET = new TextEncoder().encode("a-test-hs256-secret-of-at-least-32-bytes!");

interface Claims {
  tenant?: string;
  roles?: string[];
  iss?: string;
  aud?: string;
  iat?: number;
  exp?: number;
}

function token(c: Claims = {}): Promise<string> {
  const now = Math.floor(Date.now() / 1000);
  return new SignJWT({ tenant: c.tenant ?? "acme", roles: c.roles ?? ["OPERATOR"] })
    .setProtectedHeader({ alg: "HS256" })
    .setIssuer(c.iss ?? ISS)
    .setAudience(c.aud ?? AUD)
    .setSubject("caller-1")
    .setIssuedAt(c.iat ?? now)
    .setExpirationTime(c.exp ?? now + 300)
    .sign(SECRET);
}

async function startKernel(t: ExecutionContext, tierLimit: number): Promise<TestKernel> {
  return startTestKernel(t, {
    dge: { enabled: false },
    authn: { allowAnonymous: false },
    rateLimit: { tierLimits: { 1: tierLimit }, tenantWindowMs: 60_000 },
    identity: {
      source: "none",
      jwt: {
        issuer: [ISS, LIMITED],
        audience: AUD,
        algorithms: ["HS256"],
        hmacSecret: new TextDecoder().decode(SECRET),
        maxLifetimeSec: 3600,
        issuerRoles: { [LIMITED]: ["VIEWER"] },
      },
    },
  });
}

async function code(p: Promise<unknown>): Promise<Code | "ok"> {
  try {
    await p;
    return "ok";
  } catch (e) {
    return ConnectError.from(e).code;
  }
}

const bearer = async (c: Claims = {}) => ({ headers: { authorization: `Bearer ${await token(c)}` } });

test("replay 12 - naming another tenant spends the caller's own quota, never the named one's; bad tenants stay out of the outbox", async (t) => {
  const k = await startKernel(t, 3);
  const pairs: [TransportName, string, string][] = [
    [BOTH[0]!, "acme", "globex"],
    [BOTH[1]!, "initech", "umbrella"],
  ];
  for (const [transport, own, named] of pairs) {
    const registry = k.client(AgentRegistryService, transport);
    const mine = await bearer({ tenant: own });
    for (let i = 0; i < 3; i++)
      t.is(await code(registry.listAgents({ tenant: named }, mine)), Code.PermissionDenied, `${transport} ${i}`);
    t.is(await code(registry.listAgents({ tenant: named }, mine)), Code.ResourceExhausted, transport);
    t.is(await code(registry.listAgents({ tenant: own }, mine)), Code.ResourceExhausted, "the quota spent is its own");
    t.is(await code(registry.listAgents({ tenant: named }, await bearer({ tenant: named }))), "ok", "untouched");

    const events = k.client(EventBusService, transport);
    for (const tenant of ["../etc", "ACME", "", "a".repeat(200)]) {
      const got = await code(
        events.publish({ tenant, subject: "orders.created.v1", payload: new Uint8Array([1]) }, await bearer()),
      );
      t.not(got, "ok", `${transport} ${JSON.stringify(tenant)}`);
    }
  }
  const db = new Database(join(k.dir, "kernel.db"), { readonly: true });
  t.teardown(() => db.close());
  const tenants = (db.prepare("SELECT DISTINCT tenant FROM outbox").all() as { tenant: string }[]).map((r) => r.tenant);
  for (const bad of ["../etc", "ACME", "a".repeat(200), "globex", "umbrella"]) t.false(tenants.includes(bad), bad);
});

for (const transport of BOTH) {
  test(`replay 19 - audience, lifetime, iat and issuer-bounded roles (${transport})`, async (t) => {
    const k = await startKernel(t, 1000);
    const registry = k.client(AgentRegistryService, transport);
    const now = Math.floor(Date.now() / 1000);
    const list = async (c: Claims) => code(registry.listAgents({ tenant: "acme" }, await bearer(c)));
    t.is(await list({}), "ok");
    t.is(await list({ aud: "another-service" }), Code.PermissionDenied, "a token for another audience is 403");
    t.is(await list({ iat: now, exp: now + 7200 }), Code.Unauthenticated, "lifetime over maxLifetimeSec");
    t.is(await list({ iat: now + 600, exp: now + 900 }), Code.Unauthenticated, "iat in the future");
    // An issuer not listed in issuerRoles never grants SUPER_ADMIN: the claim is dropped.
    t.is(
      await code(registry.listAgents({ tenant: "globex" }, await bearer({ roles: ["SUPER_ADMIN"] }))),
      Code.PermissionDenied,
    );
    // The limited issuer grants VIEWER at most: reading works, ADMIN's write does not.
    const limited = await bearer({ iss: LIMITED, roles: ["ADMIN", "VIEWER"] });
    t.is(await code(registry.listAgents({ tenant: "acme" }, limited)), "ok");
    t.is(
      await code(
        registry.registerAgent({ tenant: "acme", name: "a", version: "1", endpoint: "127.0.0.1:7000" }, limited),
      ),
      Code.PermissionDenied,
    );
  });
}
