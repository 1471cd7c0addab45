// Shared by the cross-kernel tests: two pinned, handshaken kernels, agents with SVIDs of their
// kernel's dev CA and delegations minted with a kernel's own SVID.
import { createPrivateKey } from "node:crypto";
import { readFileSync } from "node:fs";
import { request } from "node:https";
import { join } from "node:path";
import * as grpc from "@grpc/grpc-js";
import type { DescService } from "@bufbuild/protobuf";
import { ConnectError, createClient, type Client } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { FederationService, PeerState } from "../../gen/nops/federation/v1/federation_pb.js";
import { AgentRegistryService } from "../../gen/nops/kernel/v1/agent_registry_pb.js";
import { agentSpiffeId } from "../../src/identity/index.js";
import { DELEGATION_JWS_TYPE, type DelegationClaims } from "../../src/federation/index.js";
import { signWithSvid } from "../../src/federation/kernel-jws.js";
import { pemToDer } from "../../src/identity/index.js";
import { loadTestCa } from "../helpers/test-ca.js";
import { startEchoAgent, type EchoAgent } from "../routing/fixtures/echo-agent.js";
import type { FedKernel } from "./two-kernels.js";

/** Kernel options that make catalogs follow quickly and keep test agents routable for the whole test. */
export const FAST_FEDERATION = {
  // Generous staleness: the machine is shared, a catalog read may be slow without the peer being gone.
  federation: { catalogRefreshMs: 500, catalogStalenessMs: 10_000 },
  registry: { heartbeatTtlMs: 600_000, zombieAfterMs: 1_200_000, reapAfterMs: 2_400_000 },
  // The embedded DGE shares the loaded machine: a slow verdict is not what these tests are about.
  egress: { dgeTimeoutMs: 30_000 },
};

const admin = (k: FedKernel) => k.client(FederationService, { kernel: k, transport: "grpc" });

/** Pins `peer` on `on` with an agreement (and `grpcEndpoint`, e.g. a proxy in front of the peer). */
export async function pinPeer(
  on: FedKernel,
  peer: FedKernel,
  agreement: {
    inbound: { tenants: string[]; capabilities: string[] };
    outbound: { tenants: string[]; capabilities: string[] };
  },
  grpcEndpoint = peer.grpcEndpoint,
): Promise<void> {
  const { body } = await peer.get("/federation/bundle");
  await admin(on).addPeer({
    spiffeId: peer.spiffeId,
    grpcEndpoint,
    httpEndpoint: peer.httpEndpoint,
    bundle: body,
    agreement,
  });
}

/** Runs the handshake from `from` to `to`; both end ESTABLISHED. */
export async function handshake(from: FedKernel, to: FedKernel): Promise<void> {
  const { peer } = await admin(from).connectPeer({ spiffeId: to.spiffeId, transport: "grpc" });
  if (peer?.state !== PeerState.ESTABLISHED) throw new Error(`handshake ${from.spiffeId} -> ${to.spiffeId} failed`);
}

/** Where a kernel (in this process or a child) listens and keeps its dev identity. */
export type KernelAt = Pick<FedKernel, "dir" | "trustDomain" | "grpcEndpoint">;

/** A gRPC client of `kernel` presenting its dev developer SVID (SUPER_ADMIN there). */
export function developerClient<S extends DescService>(kernel: KernelAt, service: S): Client<S> {
  const file = (f: string) => readFileSync(join(kernel.dir, "dev-identity", f), "utf8");
  return createClient(
    service,
    createGrpcTransport({
      baseUrl: `https://${kernel.grpcEndpoint}`,
      nodeOptions: { cert: file("svid.pem"), key: file("svid.key"), rejectUnauthorized: false },
    }),
  );
}

/** An echo agent serving mTLS with an agent SVID of `kernel`'s dev CA, registered there for `tenant`. */
export async function startKernelAgent(
  kernel: KernelAt,
  tenant: string,
  name: string,
  capability: string,
  latencyMs = 0,
): Promise<EchoAgent> {
  const file = (f: string) => readFileSync(join(kernel.dir, "dev-identity", f), "utf8");
  const ca = await loadTestCa(kernel.trustDomain, file("ca.pem"), file("ca.key"));
  const svid = await ca.issue({
    spiffeId: agentSpiffeId(kernel.trustDomain, tenant, name),
    ipAddresses: ["127.0.0.1"],
  });
  const agent = await startEchoAgent({
    name,
    latencyMs,
    credentials: grpc.ServerCredentials.createSsl(
      Buffer.from(ca.certPem),
      [{ cert_chain: Buffer.from(svid.certPem), private_key: Buffer.from(svid.keyPem) }],
      false,
    ),
  });
  await developerClient(kernel, AgentRegistryService).registerAgent({
    tenant,
    name,
    version: "1",
    endpoint: `127.0.0.1:${agent.port}`,
    capabilities: [{ name: capability }],
  });
  return agent;
}

/** Signs a delegation with `kernel`'s own SVID (what it would send a peer), claims overridable. */
export async function mintDelegation(kernel: FedKernel, claims: Partial<DelegationClaims>): Promise<string> {
  const file = (f: string) => readFileSync(join(kernel.dir, "dev-identity", f), "utf8");
  const now = Math.floor(Date.now() / 1000);
  const full: DelegationClaims = {
    iss: kernel.spiffeId,
    sub: "spiffe://test/original-caller",
    aud: "",
    tenant: "acme",
    act: { sub: kernel.spiffeId },
    iat: now,
    exp: now + 30,
    jti: `jti-${Math.random().toString(36).slice(2)}`,
    ...claims,
  };
  return signWithSvid(
    {
      spiffeId: kernel.spiffeId,
      certificates: pemToDer("CERTIFICATE", file("kernel-svid.pem")),
      privateKey: createPrivateKey(file("kernel-svid.key")),
    },
    DELEGATION_JWS_TYPE,
    new TextEncoder().encode(JSON.stringify(full)),
  );
}

/** GET over TLS without checking the server's identity (a kernel's public bundle and health endpoints). */
export function getInsecure(url: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request(url, { rejectUnauthorized: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString("utf8") }));
    });
    req.on("error", reject);
    req.end();
  });
}

/** The error of a call that must fail (a success fails the test). */
export async function failure(p: Promise<unknown>): Promise<ConnectError> {
  try {
    await p;
  } catch (err) {
    return ConnectError.from(err);
  }
  throw new Error("the call succeeded");
}
