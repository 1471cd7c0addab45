import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as grpc from "@grpc/grpc-js";
import { create, toBinary } from "@bufbuild/protobuf";
import {
  X509BundlesResponseSchema,
  X509SVIDResponseSchema,
  X509SVIDSchema,
} from "../../gen/spiffe/workload/workload_pb.js";
import type { TestSvid } from "./test-ca.js";

/** What the double currently issues: an SVID, its trust domain's bundle and federated bundles. */
export interface IssuedIdentity {
  spiffeId: string;
  svid: TestSvid;
  /** DER bundle of the SVID's trust domain. */
  bundle: Uint8Array;
  /** Federated bundles keyed by trust domain SPIFFE ID ("spiffe://other.org"). */
  federatedBundles?: Record<string, Uint8Array>;
  hint?: string;
}

/** A fake SPIFFE Workload API (SPIFFE Workload API §5) on a temporary unix socket. */
export interface WorkloadApiDouble {
  /** `unix:///…/agent.sock`, the SPIFFE_ENDPOINT_SOCKET value. */
  address: string;
  /** Metadata of every FetchX509SVID / FetchX509Bundles call received. */
  calls: { method: string; securityHeader: string[] }[];
  /** Sets the identity (pushed to open streams), or null: new calls get PermissionDenied. */
  issue(identity: IssuedIdentity | null): void;
  /** Pushes raw bytes as a message to every open FetchX509SVID stream. */
  pushRaw(bytes: Uint8Array): void;
  /** Answers every new call with this status instead (null to stop). */
  failWith(code: grpc.status | null): void;
  /** Ends every open stream with this status (e.g. Unavailable, like an agent restart). */
  endStreams(code: grpc.status): void;
  /** Number of FetchX509SVID streams currently open. */
  openStreams(): number;
  close(): Promise<void>;
}

/** Encodes an identity as a FetchX509SVID message. */
export function encodeX509SvidResponse(identity: IssuedIdentity): Uint8Array {
  return toBinary(
    X509SVIDResponseSchema,
    create(X509SVIDResponseSchema, {
      svids: [
        create(X509SVIDSchema, {
          spiffeId: identity.spiffeId,
          x509Svid: identity.svid.chainDer,
          x509SvidKey: identity.svid.keyDer,
          bundle: identity.bundle,
          hint: identity.hint ?? "",
        }),
      ],
      federatedBundles: identity.federatedBundles ?? {},
    }),
  );
}

const raw = (b: Buffer): Buffer => b;

/** Starts the double; teardown with close(). */
export async function startWorkloadApiDouble(): Promise<WorkloadApiDouble> {
  const dir = await mkdtemp(join(tmpdir(), "nops-wlapi-"));
  const socketPath = join(dir, "agent.sock");
  const server = new grpc.Server();
  const calls: WorkloadApiDouble["calls"] = [];
  const svidStreams = new Set<grpc.ServerWritableStream<Buffer, Buffer>>();
  const bundleStreams = new Set<grpc.ServerWritableStream<Buffer, Buffer>>();
  let identity: IssuedIdentity | null = null;
  let forced: grpc.status | null = null;

  const bundlesMessage = (id: IssuedIdentity): Buffer => {
    const td = new URL(id.spiffeId).host;
    return Buffer.from(
      toBinary(
        X509BundlesResponseSchema,
        create(X509BundlesResponseSchema, { bundles: { [`spiffe://${td}`]: id.bundle, ...id.federatedBundles } }),
      ),
    );
  };

  // Both streaming methods share the gatekeeping of SPIFFE Workload Endpoint §3 and §6.
  const streaming =
    (method: string, streams: Set<grpc.ServerWritableStream<Buffer, Buffer>>, encode: (id: IssuedIdentity) => Buffer) =>
    (call: grpc.ServerWritableStream<Buffer, Buffer>): void => {
      const header = call.metadata.get("workload.spiffe.io").map(String);
      calls.push({ method, securityHeader: header });
      if (header.length !== 1 || header[0] !== "true") {
        call.emit("error", { code: grpc.status.INVALID_ARGUMENT, details: "security header missing from request" });
        return;
      }
      if (forced !== null) {
        call.emit("error", { code: forced, details: "forced by test" });
        return;
      }
      if (!identity) {
        call.emit("error", { code: grpc.status.PERMISSION_DENIED, details: "no identity issued" });
        return;
      }
      streams.add(call);
      call.on("cancelled", () => streams.delete(call));
      call.write(encode(identity));
    };

  const definition: grpc.ServiceDefinition = {
    FetchX509SVID: {
      path: "/SpiffeWorkloadAPI/FetchX509SVID",
      requestStream: false,
      responseStream: true,
      requestSerialize: raw,
      requestDeserialize: raw,
      responseSerialize: raw,
      responseDeserialize: raw,
    },
    FetchX509Bundles: {
      path: "/SpiffeWorkloadAPI/FetchX509Bundles",
      requestStream: false,
      responseStream: true,
      requestSerialize: raw,
      requestDeserialize: raw,
      responseSerialize: raw,
      responseDeserialize: raw,
    },
  };
  server.addService(definition, {
    FetchX509SVID: streaming("FetchX509SVID", svidStreams, (id) => Buffer.from(encodeX509SvidResponse(id))),
    FetchX509Bundles: streaming("FetchX509Bundles", bundleStreams, bundlesMessage),
  });
  await new Promise<void>((resolve, reject) =>
    server.bindAsync(`unix://${socketPath}`, grpc.ServerCredentials.createInsecure(), (err) =>
      err ? reject(err) : resolve(),
    ),
  );

  const endAll = (code: grpc.status): void => {
    for (const set of [svidStreams, bundleStreams]) {
      for (const call of set) call.emit("error", { code, details: "ended by test" });
      set.clear();
    }
  };

  return {
    address: `unix://${socketPath}`,
    calls,
    issue(next) {
      identity = next;
      if (!next) {
        endAll(grpc.status.PERMISSION_DENIED);
        return;
      }
      for (const call of svidStreams) call.write(Buffer.from(encodeX509SvidResponse(next)));
      for (const call of bundleStreams) call.write(bundlesMessage(next));
    },
    pushRaw(bytes) {
      for (const call of svidStreams) call.write(Buffer.from(bytes));
    },
    failWith(code) {
      forced = code;
    },
    endStreams: endAll,
    openStreams: () => svidStreams.size,
    async close() {
      endAll(grpc.status.UNAVAILABLE);
      await new Promise<void>((resolve) => server.tryShutdown(() => resolve()));
      server.forceShutdown();
      await rm(dir, { recursive: true, force: true });
    },
  };
}
