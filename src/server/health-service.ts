import { setTimeout as sleep } from "node:timers/promises";
import { type ServiceImpl } from "@connectrpc/connect";
import type { Health } from "../../gen/grpc/health/v1/health_pb.js";
import { HealthCheckResponse_ServingStatus as Serving } from "../../gen/grpc/health/v1/health_pb.js";
import { notFound } from "../common/index.js";

/** Answers whether the kernel as a whole ("") or one named service can serve. */
export type ServingProbe = (service: string) => Serving | undefined;

/**
 * grpc.health.v1.Health, served on both transports. Check answers NOT_FOUND for unknown
 * services (as the standard says); Watch sends the status and then every change.
 */
export function createHealthService(probe: ServingProbe, watchIntervalMs = 1000): ServiceImpl<typeof Health> {
  return {
    check(req) {
      const status = probe(req.service);
      if (status === undefined) throw notFound("service", JSON.stringify(req.service));
      return { status };
    },
    async *watch(req, ctx) {
      let last: Serving | undefined;
      while (!ctx.signal.aborted) {
        // The standard: unknown services are reported as SERVICE_UNKNOWN on Watch, not as an error.
        const status = probe(req.service) ?? Serving.SERVICE_UNKNOWN;
        if (status !== last) {
          last = status;
          yield { status };
        }
        await sleep(watchIntervalMs, undefined, { signal: ctx.signal }).catch(() => undefined);
      }
    },
  };
}
