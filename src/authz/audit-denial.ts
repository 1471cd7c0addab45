import type { AuditLog } from "../audit/audit-log.js";
import type { Logger } from "../telemetry/logger.js";
import { kCorrelationId, kLogger, kPeer, methodPath, type CallRequest } from "../server/interceptor.js";

/** One refused call, as authn and authz record it. */
export interface Denial {
  /** Principal id, or "anonymous" when no credential was accepted. */
  actor: string;
  action: "authn.deny" | "authz.deny";
  tenant: string;
  /** Internal reason: audit trail and logs only. */
  reason: string;
  /** Which credential was tried, for authn denials. */
  credential?: string;
}

/**
 * Writes the audit row for a refused call and logs it. A failing audit write is logged and
 * does not turn the refusal into an internal error: the caller is refused either way.
 */
export function auditDenial(audit: AuditLog, logger: Logger, call: CallRequest, denial: Denial): void {
  const path = methodPath(call.method);
  const correlationId = call.ctx.values.get(kCorrelationId);
  const log = call.ctx.values.get(kLogger)?.get() ?? logger;
  // Tenants and reasons may echo caller input: bound their size in the audit row.
  const details: Record<string, unknown> = { method: path, reason: denial.reason.slice(0, 300), peer: call.ctx.values.get(kPeer).address };
  if (denial.credential) details.credential = denial.credential;
  const tenant = denial.tenant.slice(0, 63);
  log.warn({ actor: denial.actor, action: denial.action, tenant, ...details, correlationId }, "call refused");
  try {
    audit.append({
      actor: denial.actor,
      action: denial.action,
      tenant,
      resource: `method${path}`,
      outcome: "denied",
      details,
      correlationId,
    });
  } catch (e) {
    log.error({ err: e, correlationId }, "audit append failed for a refused call");
  }
}
