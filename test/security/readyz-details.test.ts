import { request } from "node:https";
import test, { type ExecutionContext } from "ava";
import { createTestCa, type TestCa, type TestSvid } from "../helpers/test-ca.js";
import { startWorkloadApiDouble } from "../helpers/workload-api-double.js";
import { startTestKernel, TEST_API_KEY_PEPPER, type TestKernel } from "../helpers/kernel.js";

// Issue 13 item 18: an unauthenticated /readyz answers ready or not ready; the dependencies and
// capabilities (hosts, versions, outages) are for authenticated operators.

const TD = "nops.test";

async function kernel(t: ExecutionContext): Promise<{ k: TestKernel; ca: TestCa }> {
  const ca = await createTestCa(TD);
  const wl = await startWorkloadApiDouble();
  t.teardown(() => wl.close());
  const id = `spiffe://${TD}/nops/kernel/edge-test`;
  const svid = await ca.issue({ spiffeId: id, dnsNames: ["localhost"], ipAddresses: ["127.0.0.1"] });
  wl.issue({ spiffeId: id, svid, bundle: ca.certDer });
  const k = await startTestKernel(t, {
    edgeId: "edge-test",
    trustDomain: TD,
    identity: { source: "workload-api", socket: wl.address, apiKeyPepper: TEST_API_KEY_PEPPER },
  });
  return { k, ca };
}

/** GET /readyz over HTTPS, optionally with a client SVID or headers. */
function readyz(
  k: TestKernel,
  ca: TestCa,
  svid?: TestSvid,
  headers: Record<string, string> = {},
): Promise<{ status: number; body: Record<string, unknown> }> {
  return new Promise((resolve, reject) => {
    const req = request(
      {
        host: "localhost",
        port: k.kernel.httpPort,
        path: "/readyz",
        ca: ca.certPem,
        ...(svid ? { cert: svid.certPem, key: svid.keyPem } : {}),
        headers,
      },
      (res) => {
        let text = "";
        res.on("data", (d: Buffer) => (text += d.toString()));
        res.on("end", () =>
          resolve({ status: res.statusCode ?? 0, body: JSON.parse(text) as Record<string, unknown> }),
        );
      },
    );
    req.on("error", reject);
    req.end();
  });
}

test("readyz details - anonymous callers learn ready or not only; operators see dependencies and capabilities", async (t) => {
  const { k, ca } = await kernel(t);
  const anonymous = await readyz(k, ca);
  t.is(anonymous.status, 200);
  t.deepEqual(Object.keys(anonymous.body).sort(), ["ready", "status"]);
  t.is(anonymous.body.ready, true);

  const operator = await readyz(k, ca, await ca.issue({ spiffeId: `spiffe://${TD}/nops/admin/ops` }));
  t.is(operator.status, 200);
  t.true(Array.isArray(operator.body.dependencies));
  t.true(Array.isArray(operator.body.capabilities));

  // A bad credential and an agent (who may not read GetStatus) get the short answer too.
  const badKey = await readyz(k, ca, undefined, { "x-api-key": "nops_000000000000000000000000_nope" });
  t.deepEqual(Object.keys(badKey.body).sort(), ["ready", "status"]);
  const agent = await readyz(k, ca, await ca.issue({ spiffeId: `spiffe://${TD}/nops/tenant/acme/agent/a1` }));
  t.deepEqual(Object.keys(agent.body).sort(), ["ready", "status"]);
  // Probes without a credential are not failed authentications: nothing to audit.
  const Database = (await import("better-sqlite3")).default;
  const db = new Database(k.kernel.options.databasePath, { readonly: true });
  t.teardown(() => db.close());
  const denials = () =>
    (db.prepare("SELECT count(*) AS n FROM audit_log WHERE action = 'authn.deny'").get() as { n: number }).n;
  const before = denials();
  for (let i = 0; i < 5; i++) t.is((await readyz(k, ca)).status, 200);
  t.is(denials(), before);
});
