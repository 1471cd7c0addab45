import { createContextValues, type HandlerContext } from "@connectrpc/connect";
import { createDenialAuditor, type AuditLog } from "../audit/index.js";
import type { Clock } from "../common/index.js";
import type { Logger } from "../telemetry/index.js";
import {
  createMethodMatcher,
  kCorrelationId,
  kPeer,
  methodPath,
  type CallRequest,
  type CredentialGate,
} from "../server/index.js";

/** What the gate needs from the authentication options (AuthnOptions). */
export interface CredentialGateOptions {
  /** Methods callable without a credential. */
  publicMethods: readonly string[];
  /** Calls without any credential are let through (anonymous principal). */
  allowAnonymous: boolean;
}

/** Dependencies of the gate: where its refusals are audited, as authn's are. */
export interface CredentialGateDeps {
  audit: AuditLog;
  logger: Logger;
  clock?: Clock;
}

// Every credential the authn and request-signing interceptors accept, by where it travels.
const CREDENTIAL_HEADERS = ["authorization", "x-api-key", "x-nops-signature"];

/** True when a request carries a credential header of any kind (valid or not: authn decides). */
export function carriesCredential(header: (name: string) => string | null | undefined): boolean {
  return CREDENTIAL_HEADERS.some((name) => {
    const v = header(name);
    return v !== null && v !== undefined;
  });
}

/**
 * Decides, from headers alone, whether a call may have its body read: a call that carries no
 * credential at all, to a method that is not public, while anonymous access is off, can only end
 * UNAUTHENTICATED, so it is answered before its body is buffered or parsed, and audited as
 * "authn.deny" like authn's own refusals (repeats share a row). Whether a credential is valid
 * stays authn's decision: it may need the body (signed requests).
 */
export function createCredentialGate(deps: CredentialGateDeps, options: CredentialGateOptions): CredentialGate {
  const isPublic = createMethodMatcher(options.publicMethods);
  const denials = createDenialAuditor(deps);
  return (req) => {
    if (options.allowAnonymous || req.peerCertificate) return true;
    const path = methodPath(req.method);
    if (isPublic(path)) return true;
    if (carriesCredential((name) => req.header(name))) return true;
    // The denial auditor reads the method, peer and correlation id of a chain call.
    const values = createContextValues()
      .set(kPeer, { address: req.peer, transport: "connect-node", certificates: [] })
      .set(kCorrelationId, req.requestId());
    const call = { method: req.method, ctx: { values } as HandlerContext } as CallRequest;
    denials(call, {
      actor: "anonymous",
      action: "authn.deny",
      tenant: "",
      reason: "no credential",
      credential: "none",
    });
    return false;
  };
}
