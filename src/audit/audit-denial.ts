import type { AuditLog } from "./audit-log.js";
import { systemClock, type Clock } from "../common/index.js";
import type { Logger } from "../telemetry/index.js";
import { clientIp, kCorrelationId, kLogger, kPeer, methodPath, type CallRequest } from "../server/index.js";

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

/** Records a refused call. */
export type DenialAuditor = (call: CallRequest, denial: Denial) => void;

/** Repeats of one refusal within this window share one audit row. */
export const DEFAULT_DENIAL_AUDIT_WINDOW_MS = 60_000;
// Distinct refusals tracked at once; past it the oldest are forgotten (and audited again).
const MAX_TRACKED = 10_000;

/**
 * Creates the auditor of refused calls: an audit row and a warning per refusal, except that the
 * same refusal (action, actor, client IP, method, tenant, reason) repeated within `windowMs`
 * is counted, not written: a flood of refused calls must not become a flood of fsync'd audit
 * rows. The next row of that refusal carries the count (`repeatsNotRecorded`). A failing audit
 * write is logged and does not turn the refusal into an internal error.
 */
export function createDenialAuditor(
  deps: { audit: AuditLog; logger: Logger; clock?: Clock },
  windowMs = DEFAULT_DENIAL_AUDIT_WINDOW_MS,
): DenialAuditor {
  const clock = deps.clock ?? systemClock;
  const recent = new Map<string, { until: number; repeats: number }>();

  // Re-inserted on every write, so Map order is expiry order: the first entry is the oldest.
  const remember = (key: string, now: number): void => {
    recent.delete(key);
    recent.set(key, { until: now + windowMs, repeats: 0 });
    while (recent.size > MAX_TRACKED) recent.delete(recent.keys().next().value!);
  };

  return (call, denial) => {
    const path = methodPath(call.method);
    const correlationId = call.ctx.values.get(kCorrelationId);
    const peer = call.ctx.values.get(kPeer).address;
    // Tenants and reasons may echo caller input: bound their size in the audit row.
    const tenant = denial.tenant.slice(0, 63);
    const reason = denial.reason.slice(0, 300);
    // Failed authentications from one address count as one refusal per kind of credential,
    // whatever each guess said (a reason names the key id tried): 1,000 bad keys are one row.
    const what = denial.action === "authn.deny" ? `credential:${denial.credential ?? ""}` : reason;
    const key = [denial.action, denial.actor, clientIp(peer), path, tenant, what].join("\u0000");
    const now = clock.now();
    const seen = recent.get(key);
    if (seen && seen.until > now) {
      seen.repeats++;
      return;
    }
    remember(key, now);
    // The request logger already carries the correlation id; a second binding would repeat the key.
    const log = call.ctx.values.get(kLogger)?.get() ?? deps.logger.child({ correlationId });
    const details: Record<string, unknown> = { method: path, reason, peer };
    if (denial.credential) details.credential = denial.credential;
    if (seen?.repeats) details.repeatsNotRecorded = seen.repeats;
    log.warn({ actor: denial.actor, action: denial.action, tenant, ...details }, "call refused");
    try {
      deps.audit.append({
        actor: denial.actor,
        action: denial.action,
        tenant,
        resource: `method${path}`,
        outcome: "denied",
        details,
        correlationId,
      });
    } catch (e) {
      log.error({ err: e }, "audit append failed for a refused call");
    }
  };
}
