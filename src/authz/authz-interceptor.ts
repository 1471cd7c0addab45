import { type AuditLog, createDenialAuditor, type DenialAuditor } from "../audit/index.js";
import { type Clock, permissionDenied, unauthenticated } from "../common/index.js";
import type { Logger } from "../telemetry/index.js";
import { kPrincipal, mayInvoke, type Principal } from "../identity/index.js";
import {
  methodPath,
  type CallHandler,
  type CallRequest,
  type CallResult,
  type KernelInterceptor,
  createMethodMatcher,
} from "../server/index.js";
import type { AuthzOptions } from "./authz-options.js";
import { createAuthorizer, type Authorizer } from "./authorizer.js";
import { createTenantExtractor, type TenantExtractor, type TenantTargets } from "./tenant-extractor.js";

/** What the authz interceptor needs. */
export interface AuthzDeps {
  audit: AuditLog;
  /** Component logger (child "authz"). */
  logger: Logger;
  clock?: Clock;
}

// Clients learn only that they were refused; the reason is in the audit trail.
const DENIED_MESSAGE = "permission denied";

/**
 * Creates the authorization link of the chain: after authn, it checks the method's scope or
 * role and the tenants the request targets against the principal in kPrincipal. Refusals are
 * PERMISSION_DENIED (UNAUTHENTICATED without a principal) and are audited as "authz.deny".
 */
export function createAuthzInterceptor(deps: AuthzDeps, options: AuthzOptions): KernelInterceptor {
  const authorizer = createAuthorizer(options);
  const isPublic = createMethodMatcher(options.publicMethods);
  const extract = createTenantExtractor();
  const denials = createDenialAuditor(deps);
  const isInvoke = createMethodMatcher(options.invokeMethods);
  // Invoke grants: an AGENT reaches only the capabilities its credential names.
  const checkInvoke = (call: CallRequest, principal: Principal, message: unknown): void => {
    const capability = (message as { capability?: unknown }).capability;
    if (typeof capability !== "string" || mayInvoke(principal, capability)) return;
    denials(call, {
      actor: principal.id,
      action: "authz.deny",
      tenant: extractTenant(call, message, principal),
      reason: `no invoke grant for capability ${JSON.stringify(capability.slice(0, 128))}`,
    });
    throw permissionDenied(
      `permission denied: no invoke grant for capability ${JSON.stringify(capability.slice(0, 128))}`,
    );
  };
  const extractTenant = (call: CallRequest, message: unknown, principal: Principal): string =>
    extract(call.method.input, message).tenants[0] ?? principal.tenant ?? "";
  /** `next(call)`, or the call with its stream's messages checked as they arrive; throws to refuse. */
  function authorized(next: CallHandler, call: CallRequest): Promise<CallResult> {
    const path = methodPath(call.method);
    if (isPublic(path)) return next(call);
    const principal = call.ctx.values.get(kPrincipal);
    if (!principal) {
      if (options.allowAnonymous) return next(call);
      denials(call, { actor: "anonymous", action: "authn.deny", tenant: "", reason: "no principal reached authz" });
      throw unauthenticated();
    }
    const kind = call.method.methodKind;
    if (kind === "unary" || kind === "server_streaming") {
      check(authorizer, denials, call, principal, path, extract(call.method.input, call.input));
      if (isInvoke(path)) checkInvoke(call, principal, call.input);
      return next(call);
    }
    // Client and bidi streams: the method itself is checked up front for the principal's own
    // tenant, then every message as it arrives.
    const own: TenantTargets = {
      hasField: principal.tenant !== undefined,
      tenants: principal.tenant === undefined ? [] : [principal.tenant],
    };
    check(authorizer, denials, call, principal, path, own);
    const input = call.input as AsyncIterable<unknown>;
    const invoke = isInvoke(path) ? checkInvoke : undefined;
    return next({ ...call, input: checkEach(authorizer, denials, call, principal, path, input, extract, invoke) });
  }

  // Every check is synchronous: the link is a plain function, a refusal a rejected promise.
  return (next) => (call) => {
    try {
      return authorized(next, call);
    } catch (err) {
      return Promise.reject(err);
    }
  };
}

function check(
  authorizer: Authorizer,
  denials: DenialAuditor,
  call: CallRequest,
  principal: Principal,
  path: string,
  targets: TenantTargets,
): void {
  const decision = authorizer.decide(principal, path, targets);
  if (decision.allowed) return;
  denials(call, {
    actor: principal.id,
    action: "authz.deny",
    tenant: targets.tenants[0] ?? principal.tenant ?? "",
    reason: decision.reason,
  });
  throw permissionDenied(DENIED_MESSAGE);
}

async function* checkEach(
  authorizer: Authorizer,
  denials: DenialAuditor,
  call: CallRequest,
  principal: Principal,
  path: string,
  input: AsyncIterable<unknown>,
  extract: TenantExtractor,
  checkInvoke?: (call: CallRequest, principal: Principal, message: unknown) => void,
): AsyncIterable<unknown> {
  for await (const message of input) {
    check(authorizer, denials, call, principal, path, extract(call.method.input, message));
    checkInvoke?.(call, principal, message);
    yield message;
  }
}
