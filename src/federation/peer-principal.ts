import { AgentRegistryService } from "../../gen/nops/kernel/v1/agent_registry_pb.js";
import type { AuditLog } from "../audit/index.js";
import {
  failedPrecondition,
  permissionDenied,
  resourceExhausted,
  unauthenticated,
  type Clock,
} from "../common/index.js";
import { kPrincipal, type Principal } from "../identity/index.js";
import {
  endStreamOnAbort,
  kCorrelationId,
  methodPath,
  observeStream,
  withSignal,
  type CallHandler,
  type CallRequest,
  type CallResult,
  type KernelInterceptor,
} from "../server/index.js";
import { HOPS_HEADER } from "../routing/index.js";
import type { Delegation, Delegations } from "./delegation.js";
import { FederationRefusal } from "./kernel-jws.js";
import type { PeerRecord, PeerRegistry } from "./peer-registry.js";

/** Request header carrying the delegation of a call a peer kernel forwards (RFC 8693 token exchange). */
export const DELEGATION_HEADER = "x-nops-delegation";

/** Dependencies of the KERNEL_PEER link. */
export interface PeerPrincipalDeps {
  registry: PeerRegistry;
  delegations: Delegations;
  audit: AuditLog;
  clock: Clock;
  /** This kernel's trust domain: its own workloads are never peers. */
  trustDomain: string;
  /** Calls that crossed more kernels than this are refused (loops). */
  maxHops: number;
}

/**
 * What a peer kernel may do for the tenant of a verified delegation: route and invoke in that tenant
 * (and read its routable agents, for the peer's catalog), the capabilities limited to the agreement's
 * inbound ones. No role: a peer is never an operator or admin of this kernel.
 */
function peerPrincipal(peer: PeerRecord, d: Delegation, hops: number): Principal {
  const t = d.tenant;
  return {
    kind: "kernel-peer",
    id: peer.spiffeId,
    tenant: t,
    roles: [],
    scopes: [`routing/route/${t}`, `routing/invoke/${t}`, `registry/read/${t}`],
    capabilities: [],
    invoke: peer.agreement.inbound.capabilities,
    delegation: { originalPrincipal: d.originalPrincipal, hops },
  };
}

function refusalError(err: FederationRefusal): unknown {
  if (err.code === "permission-denied") return permissionDenied(err.reason);
  if (err.code === "failed-precondition") return failedPrecondition(err.reason);
  // The replay cache is full: the peer may retry once older delegations have expired.
  if (err.code === "resource-exhausted") return resourceExhausted(err.reason, 1000);
  return unauthenticated(err.reason);
}

/**
 * The link after authn that turns a pinned peer kernel's SPIFFE principal into a KERNEL_PEER.
 * Without a delegation the peer is bound to no tenant and holds no scope (every tenant or admin
 * method is PERMISSION_DENIED by authz, audited there). With one, the delegation is verified
 * (wrong audience or tenant outside the agreement PERMISSION_DENIED, expired or replayed
 * UNAUTHENTICATED, each audited as "federation.delegation") and the principal acts in its tenant;
 * a catalog watch it opens ends UNAUTHENTICATED when the delegation expires.
 * A quarantined or unknown peer keeps the role-less principal authn gave it.
 */
export function createPeerPrincipalInterceptor(deps: PeerPrincipalDeps): KernelInterceptor {
  const { registry, delegations, audit, clock } = deps;
  // On the hot path of every mTLS call: the own trust domain is told apart by its prefix alone.
  const ownPrefix = `spiffe://${deps.trustDomain}/`;
  async function asPeer(next: CallHandler, call: CallRequest, principal: Principal): Promise<CallResult> {
    const peer = registry.get(principal.id);
    if (!peer || peer.state === "quarantined") return next(call);
    const token = call.ctx.requestHeader.get(DELEGATION_HEADER);
    if (token === null) {
      call.ctx.values.set(kPrincipal, {
        kind: "kernel-peer",
        id: peer.spiffeId,
        tenant: undefined,
        roles: [],
        scopes: [],
        capabilities: [],
      });
      return next(call);
    }
    const hopsText = call.ctx.requestHeader.get(HOPS_HEADER) ?? "1";
    const hops = /^\d{1,2}$/.test(hopsText) ? Number(hopsText) : NaN;
    if (!(hops >= 1 && hops <= deps.maxHops)) {
      audit.append({
        actor: peer.spiffeId,
        action: "federation.delegation",
        tenant: "",
        resource: "delegation",
        outcome: "denied",
        details: { reason: `hop count ${hopsText} outside 1..${deps.maxHops} (loop or misrouted call)` },
      });
      throw failedPrecondition(`call crossed too many kernels (${HOPS_HEADER}: ${hopsText}, limit ${deps.maxHops})`);
    }
    let delegation: Delegation;
    try {
      delegation = await delegations.verify(token, peer.spiffeId);
    } catch (err) {
      throw err instanceof FederationRefusal ? refusalError(err) : err;
    }
    call.ctx.values.set(kPrincipal, peerPrincipal(peer, delegation, hops));
    // The receiving side of a forwarded call is audited too (the origin audits "federation.forward");
    // the peer's catalog watches, reopened with every delegation, are not (no tenant data; a flood).
    if (call.service.typeName !== AgentRegistryService.typeName)
      audit.append({
        actor: peer.spiffeId,
        action: "federation.accept",
        tenant: delegation.tenant,
        resource: methodPath(call.method),
        outcome: "ok",
        details: { originalPrincipal: delegation.originalPrincipal, hops },
        correlationId: call.ctx.values.get(kCorrelationId) || undefined,
      });
    if (call.method !== AgentRegistryService.method.watchAgents) return next(call);
    // A standing subscription (the peer's catalog watch) lasts only as long as the delegation that
    // allowed it: it stops at its expiry and the peer reopens it with a fresh one. A forwarded call
    // (InvokeStream included) was allowed when it started and runs to its own deadline.
    const expiry = new AbortController();
    const timer = clock.setTimeout(
      () => expiry.abort(unauthenticated("delegation expired; reopen the stream with a fresh delegation")),
      delegation.expiresAt - clock.now(),
    );
    timer.unref();
    const signal = AbortSignal.any([call.ctx.signal, expiry.signal]);
    const ctx = withSignal(call.ctx, () => signal);
    try {
      const result = await next({ ...call, ctx });
      if (result.kind === "stream") {
        return {
          kind: "stream",
          output: observeStream(endStreamOnAbort(result.output, expiry.signal), () => clock.clearTimeout(timer)),
        };
      }
      clock.clearTimeout(timer);
      return result;
    } catch (err) {
      clock.clearTimeout(timer);
      throw err;
    }
  }

  // Every call but a foreign SPIFFE principal's passes without a promise of its own.
  return (next) => (call) => {
    const principal = call.ctx.values.get(kPrincipal);
    return principal?.kind !== "spiffe" || principal.id.startsWith(ownPrefix)
      ? next(call)
      : asPeer(next, call, principal);
  };
}
