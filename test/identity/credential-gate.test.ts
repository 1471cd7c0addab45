import test from "ava";
import * as grpc from "@grpc/grpc-js";
import { Health, HealthCheckResponse_ServingStatus as Serving } from "../../gen/grpc/health/v1/health_pb.js";
import { AdminService, GetStatusResponseSchema } from "../../gen/nops/kernel/v1/admin_pb.js";
import { create } from "@bufbuild/protobuf";
import { DEFAULT_KERNEL_OPTIONS } from "../../src/kernel/kernel-options.js";
import { bindService } from "../../src/server/bind-service.js";
import { createCredentialGate } from "../../src/identity/credential-gate.js";
import { createGrpcServer } from "../../src/server/grpc-server.js";
import { createHttpServer } from "../../src/server/http-server.js";
import type { KernelInterceptor } from "../../src/server/interceptor.js";
import { DEFAULT_PUBLIC_METHODS } from "../../src/server/method-pattern.js";
import { createSilentLogger } from "../../src/telemetry/logger.js";

// Counts the calls that reached the chain, i.e. whose body was read and decoded.
function counted() {
  const seen: string[] = [];
  const spy: KernelInterceptor = (next) => (call) => {
    seen.push(call.method.name);
    return next(call);
  };
  const services = [
    bindService(AdminService, { getStatus: () => create(GetStatusResponseSchema, { version: "x" }) }, [spy]),
    bindService(Health, { check: () => ({ status: Serving.SERVING }), async *watch() {} }, [spy]),
  ];
  return { seen, services };
}

function auditLog() {
  const rows: { action: string; outcome: string }[] = [];
  return { rows, audit: { append: (row: { action: string; outcome: string }) => void rows.push(row) } as never };
}
const log = auditLog();
const gate = createCredentialGate(
  { audit: log.audit, logger: createSilentLogger() },
  { publicMethods: [...DEFAULT_PUBLIC_METHODS], allowAnonymous: false },
);

test("credential gate - HTTP port: a call with no credential is 401 before its body is read; public methods and callers with a credential pass", async (t) => {
  const { seen, services } = counted();
  const server = createHttpServer({
    services,
    routes: {},
    limits: DEFAULT_KERNEL_OPTIONS.limits,
    credentialGate: gate,
  });
  const port = await server.listen("127.0.0.1", 0);
  t.teardown(() => server.shutdown(100));
  const post = (path: string, headers: Record<string, string> = {}) =>
    fetch(`http://127.0.0.1:${port}${path}`, {
      method: "POST",
      headers: { "content-type": "application/json", ...headers },
      body: "{}",
    });
  const refused = await post("/nops.kernel.v1.AdminService/GetStatus");
  t.is(refused.status, 401);
  t.deepEqual(await refused.json(), { code: "unauthenticated", message: "unauthenticated" });
  t.deepEqual(seen, [], "the refused call never reached decoding or the chain");
  t.true(
    log.rows.some((r) => r.action === "authn.deny" && r.outcome === "denied"),
    "the refusal is audited",
  );
  t.is((await post("/grpc.health.v1.Health/Check")).status, 200, "public");
  t.is((await post("/nops.kernel.v1.AdminService/GetStatus", { "x-api-key": "k" })).status, 200, "judged by authn");
  t.deepEqual(seen, ["Check", "GetStatus"]);
});

test("credential gate - gRPC port: a call with no credential is UNAUTHENTICATED before its message is decoded", async (t) => {
  const { seen, services } = counted();
  const server = createGrpcServer({ services, limits: DEFAULT_KERNEL_OPTIONS.limits, credentialGate: gate });
  const port = await server.listen("127.0.0.1", 0, grpc.ServerCredentials.createInsecure());
  const client = new grpc.Client(`127.0.0.1:${port}`, grpc.credentials.createInsecure());
  t.teardown(async () => {
    client.close();
    await server.shutdown(100);
  });
  const raw = (b: Buffer) => b;
  const call = (path: string, md = new grpc.Metadata()) =>
    new Promise<grpc.status>((resolve) =>
      // Not even valid protobuf: a decoded body would be INVALID_ARGUMENT, not UNAUTHENTICATED.
      client.makeUnaryRequest(path, raw, raw, Buffer.from([0xff, 0xff]), md, (err) => resolve(err?.code ?? 0)),
    );
  t.is(await call("/nops.kernel.v1.AdminService/GetStatus"), grpc.status.UNAUTHENTICATED);
  t.deepEqual(seen, []);
  // The refusal still carries the caller's request id.
  const tagged = new grpc.Metadata();
  tagged.set("x-request-id", "req-9");
  const echoed = await new Promise<string | undefined>((resolve) => {
    const c = client.makeUnaryRequest(
      "/nops.kernel.v1.AdminService/GetStatus",
      raw,
      raw,
      Buffer.alloc(0),
      tagged,
      () => undefined,
    );
    c.on("metadata", (m: grpc.Metadata) => resolve(m.get("x-request-id")[0]?.toString()));
    c.on("status", () => resolve(undefined));
  });
  t.is(echoed, "req-9");
  const md = new grpc.Metadata();
  md.set("authorization", "Bearer x");
  t.is(
    await call("/nops.kernel.v1.AdminService/GetStatus", md),
    grpc.status.INVALID_ARGUMENT,
    "decoded once a credential is present",
  );
});

test("credential gate - anonymous access, a client certificate or a signature header admits", (t) => {
  const deps = { audit: auditLog().audit, logger: createSilentLogger() };
  const req = { method: AdminService.method.getStatus, peer: "127.0.0.1:1", requestId: () => "r" };
  const anon = createCredentialGate(deps, { publicMethods: [], allowAnonymous: true });
  t.true(anon({ ...req, header: () => undefined, peerCertificate: false }));
  const strict = createCredentialGate(deps, { publicMethods: [], allowAnonymous: false });
  t.true(strict({ ...req, header: () => undefined, peerCertificate: true }));
  t.false(strict({ ...req, header: () => undefined, peerCertificate: false }));
  t.true(strict({ ...req, header: (n) => (n === "x-nops-signature" ? "sig" : undefined), peerCertificate: false }));
});
