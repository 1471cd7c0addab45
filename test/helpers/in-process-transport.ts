import { createRouterTransport, type HandlerContext, type Transport } from "@connectrpc/connect";
import type { AnyMethodImpl, BoundService } from "../../src/server/bind-service.js";
import { kPeer, type PeerInfo } from "../../src/server/interceptor.js";

/** Options of the in-process lane. */
export interface InProcessTransportOptions {
  /** The peer the interceptor chain sees (mTLS certificates, address). @default a loopback peer without certificates */
  peer?: PeerInfo;
  /** Largest message either side accepts, as the servers' limits.maxMessageBytes. @default 4 MiB */
  maxMessageBytes?: number;
}

/**
 * A Transport that calls the kernel's bound services (interceptor chain included) in this
 * process, through connect's router transport: requests and responses are still serialized
 * (Connect protocol, binary) and handlers get a real HandlerContext, but no socket is opened.
 * The fast lane for service tests that are not about a transport.
 */
export function createInProcessTransport(
  services: readonly BoundService[],
  options: InProcessTransportOptions = {},
): Transport {
  const peer = options.peer ?? { address: "127.0.0.1:0", transport: "connect-node", certificates: [] };
  const maxBytes = options.maxMessageBytes ?? 4 * 1024 * 1024;
  return createRouterTransport(
    (router) => {
      for (const bound of services) {
        // The servers put the peer on each call's context (http-server.ts, grpc-server.ts); the
        // router transport has no socket, so the lane sets it before the chain runs.
        const impl: Record<string, AnyMethodImpl> = {};
        for (const [name, method] of Object.entries(bound.impl)) {
          impl[name] = (input: unknown, ctx: HandlerContext) => {
            ctx.values.set(kPeer, peer);
            return method(input, ctx);
          };
        }
        router.service(bound.service, impl as never);
      }
    },
    {
      router: { readMaxBytes: maxBytes, writeMaxBytes: maxBytes },
      transport: { readMaxBytes: maxBytes, writeMaxBytes: maxBytes },
    },
  );
}
