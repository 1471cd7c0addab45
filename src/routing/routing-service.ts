import { type HandlerContext, type ServiceImpl } from "@connectrpc/connect";
import type { RouteConstraints, RoutingService } from "../../gen/nops/kernel/v1/routing_pb.js";
import { readInt, readObject, checkTenant, invalidArgument } from "../common/index.js";
import { kCorrelationId } from "../server/index.js";
import { OVERRIDE_HEADER, forwardableTraceContext } from "../egress/index.js";
import type { SelectionConstraints } from "./agent-selector.js";
import type { InvokeParams, Router } from "./router.js";
import { kPrincipal } from "../identity/index.js";

/** Options of the RoutingService handler. */
export interface RoutingServiceOptions {
  /** Largest Invoke payload accepted, bytes. @default 4194304 */
  maxPayloadBytes: number;
}

/** Default largest payload: 4 MiB, grpc-js's default message limit. */
export const DEFAULT_MAX_PAYLOAD_BYTES = 4 * 1024 * 1024;

/** Fills defaults and validates; throws ConfigError naming the bad field. */
export function resolveRoutingServiceOptions(
  input: Partial<RoutingServiceOptions> = {},
  path = "routing.service",
): RoutingServiceOptions {
  return { maxPayloadBytes: readInt(readObject(input, path), "maxPayloadBytes", path, DEFAULT_MAX_PAYLOAD_BYTES, 1) };
}

/** Dependencies of the RoutingService handler. */
export interface RoutingServiceDeps {
  router: Router;
}

const CAPABILITY_RE = /^[A-Za-z0-9][A-Za-z0-9._/-]{0,127}$/;

function validate(tenant: string, capability: string): void {
  checkTenant(tenant);
  if (!CAPABILITY_RE.test(capability))
    throw invalidArgument("capability", "must be 1-128 letters, digits, '.', '_', '/' or '-'");
}

function constraintsOf(c: RouteConstraints | undefined): SelectionConstraints {
  return {
    labels: c?.labels ?? {},
    capabilityVersion: c?.capabilityVersion ?? "",
    excludeAgentIds: c?.excludeAgentIds ?? [],
  };
}

/** Creates the nops.kernel.v1.RoutingService handler over a router. */
export function createRoutingService(
  deps: RoutingServiceDeps,
  options: RoutingServiceOptions,
): ServiceImpl<typeof RoutingService> {
  function params(
    req: {
      tenant: string;
      capability: string;
      payload: Uint8Array;
      contentType: string;
      constraints?: RouteConstraints;
      idempotent: boolean;
    },
    ctx: HandlerContext,
  ): InvokeParams {
    validate(req.tenant, req.capability);
    if (req.payload.byteLength > options.maxPayloadBytes) {
      throw invalidArgument("payload", `must be at most ${options.maxPayloadBytes} bytes`);
    }
    return {
      tenant: req.tenant,
      capability: req.capability,
      payload: req.payload,
      contentType: req.contentType,
      constraints: constraintsOf(req.constraints),
      idempotent: req.idempotent,
      timeoutMs: ctx.timeoutMs(),
      signal: ctx.signal,
      // Malformed trace headers are dropped, not forwarded to the agent.
      ...forwardableTraceContext(
        ctx.requestHeader.get("traceparent") ?? undefined,
        ctx.requestHeader.get("tracestate") ?? undefined,
      ),
      requestId: ctx.values.get(kCorrelationId) || undefined,
      override: ctx.requestHeader.get(OVERRIDE_HEADER) ?? undefined,
      caller: ctx.values.get(kPrincipal)?.id,
      // Only a peer kernel's hop count is believed (its delegation was verified); anyone else starts at 0.
      hops: ctx.values.get(kPrincipal)?.delegation?.hops ?? 0,
    };
  }

  return {
    route(req) {
      validate(req.tenant, req.capability);
      const sel = deps.router.route(req.tenant, req.capability, constraintsOf(req.constraints));
      return {
        agent: sel.agent,
        mode: sel.mode,
        reason: sel.reason,
        score: sel.score,
        weight: sel.weight,
        candidates: sel.candidates,
        fallback: sel.fallback,
      };
    },
    async invoke(req, ctx) {
      const res = await deps.router.invoke(params(req, ctx));
      return {
        payload: res.payload,
        contentType: res.contentType,
        agentId: res.agent.id,
        agentName: res.agent.name,
        attempts: res.attempts,
      };
    },
    async *invokeStream(req, ctx) {
      for await (const chunk of deps.router.invokeStream(params(req, ctx))) {
        yield { payload: chunk.payload, contentType: chunk.contentType, agentId: chunk.agent.id };
      }
    },
  };
}
