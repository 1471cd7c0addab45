import type { Db } from "../store/index.js";
import { createHmac, timingSafeEqual } from "node:crypto";
import type { Clock } from "../common/index.js";
import { EGRESS_CLASS_NAMES, type EgressClassName, destinationAllowed } from "./dge-contract.js";

/** Header carrying a break-glass grant on an outbound call (stripped before the call leaves). */
export const OVERRIDE_HEADER = "x-enis-override";
/** Longest a grant may live (issue: at most 1 h). */
export const MAX_OVERRIDE_TTL_MS = 3_600_000;

/** What the approvers sign. */
export interface OverrideGrant {
  /** Unique id; a grant is single-use. */
  id: string;
  tenant: string;
  /** Why the override is needed (audited). */
  reason: string;
  /** Highest class of data the grant covers, "D0".."D4". */
  classification: EgressClassName;
  /** Destinations covered (exact or "prefix*"); empty covers any. */
  destinations: string[];
  /** Unix ms. */
  issuedAt: number;
  /** Unix ms; at most MAX_OVERRIDE_TTL_MS after issuedAt. */
  expiresAt: number;
}

/** One approver's HMAC over the grant. */
export interface OverrideApproval {
  approver: string;
  /** Hex HMAC-SHA256 of the canonical grant under the approver's key. */
  sig: string;
}

/** Outcome of checking a grant. */
export type OverrideCheck =
  | { ok: true; grant: OverrideGrant; approvers: string[] }
  | {
      ok: false;
      reason:
        | "override_malformed"
        | "override_tampered"
        | "override_insufficient_approvals"
        | "override_expired"
        | "override_bad_validity"
        | "override_replayed"
        | "override_scope_mismatch"
        | "override_class_exceeded";
      grantId: string;
    };

function canonical(g: OverrideGrant): string {
  return JSON.stringify([
    "nops-override-v1",
    g.id,
    g.tenant,
    g.reason,
    g.classification,
    [...g.destinations].sort(),
    g.issuedAt,
    g.expiresAt,
  ]);
}

function hmac(secret: string, g: OverrideGrant): Buffer {
  return createHmac("sha256", secret).update(canonical(g)).digest();
}

/** Signs a grant with each approver's key and encodes the header value (ops tooling and tests). */
export function encodeOverrideGrant(grant: OverrideGrant, approvers: { id: string; secret: string }[]): string {
  const approvals: OverrideApproval[] = approvers.map((a) => ({
    approver: a.id,
    sig: hmac(a.secret, grant).toString("hex"),
  }));
  return Buffer.from(JSON.stringify({ grant, approvals })).toString("base64url");
}

function parse(header: string): { grant: OverrideGrant; approvals: OverrideApproval[] } | undefined {
  try {
    const v = JSON.parse(Buffer.from(header, "base64url").toString("utf8")) as {
      grant?: Partial<OverrideGrant>;
      approvals?: unknown;
    };
    const g = v.grant;
    if (
      !g ||
      typeof g.id !== "string" ||
      g.id === "" ||
      typeof g.tenant !== "string" ||
      typeof g.reason !== "string" ||
      g.reason === "" ||
      !(EGRESS_CLASS_NAMES as readonly unknown[]).includes(g.classification) ||
      !Array.isArray(g.destinations) ||
      g.destinations.some((d) => typeof d !== "string") ||
      !Number.isSafeInteger(g.issuedAt) ||
      !Number.isSafeInteger(g.expiresAt) ||
      !Array.isArray(v.approvals)
    )
      return undefined;
    const approvals = v.approvals.filter(
      (a): a is OverrideApproval =>
        typeof a === "object" &&
        a !== null &&
        typeof (a as OverrideApproval).approver === "string" &&
        /^[0-9a-f]{64}$/.test(String((a as OverrideApproval).sig)),
    );
    if (approvals.length !== v.approvals.length) return undefined;
    return { grant: g as OverrideGrant, approvals };
  } catch {
    return undefined;
  }
}

/** Verifies break-glass grants: two distinct approvers from the set, unexpired, in scope, used once. */
export interface OverrideVerifier {
  /** Checks `header` for a call of `tenant` to `destination`; a valid grant is consumed. */
  check(header: string, tenant: string, destination: string): OverrideCheck;
  /** Checks `header` like check() without consuming it (the data may still exceed its class). */
  verify(header: string, tenant: string, destination: string): OverrideCheck;
  /** Consumes a verified grant; false when it was already used (a replay). */
  claim(grant: OverrideGrant): boolean;
}

/** Rank of an egress class name ("D0" lowest); -1 for "" (unclassified) or anything else. */
export function classRank(name: string): number {
  return (EGRESS_CLASS_NAMES as readonly string[]).indexOf(name);
}

/**
 * Does a grant declaring class `declared` cover data classified `actual`? Only data at or below
 * the declared class: a D0 grant cannot release card numbers. Unclassified data is not covered.
 */
export function grantCovers(declared: EgressClassName, actual: string): boolean {
  const rank = classRank(actual);
  return rank >= 0 && rank <= classRank(declared);
}

/** Grants already used. A used grant stays refused until it expires, when expiry refuses it anyway. */
export interface UsedGrants {
  /** Records `id` as used; false when it already was. */
  claim(id: string, expiresAt: number): boolean;
  /** Forgets grants expired before `now`. */
  prune(now: number): void;
}

/** Used grants in memory (a restart forgets them: use the SQLite store in the kernel). */
export function createMemoryUsedGrants(): UsedGrants {
  const used = new Map<string, number>();
  return {
    claim(id, expiresAt) {
      if (used.has(id)) return false;
      used.set(id, expiresAt);
      return true;
    },
    prune(now) {
      for (const [id, exp] of used) if (exp < now) used.delete(id);
    },
  };
}

/** Used grants in SQLite (migration 0005), so a restart within a grant's hour cannot replay it. */
export function createSqliteUsedGrants(db: Db): UsedGrants {
  const insert = db.prepare("INSERT OR IGNORE INTO egress_override_uses (grant_id, expires_at) VALUES (?, ?)");
  const prune = db.prepare("DELETE FROM egress_override_uses WHERE expires_at < ?");
  return {
    claim: (id, expiresAt) => insert.run(id, expiresAt).changes === 1,
    prune: (now) => void prune.run(now),
  };
}

/** Creates the verifier over the approver set (approver id -> HMAC key). */
export function createOverrideVerifier(
  clock: Clock,
  approvers: Readonly<Record<string, string>>,
  requiredApprovals = 2,
  used: UsedGrants = createMemoryUsedGrants(),
): OverrideVerifier {
  const verifier: OverrideVerifier = {
    check(header, tenant, destination) {
      const v = verifier.verify(header, tenant, destination);
      if (!v.ok) return v;
      return verifier.claim(v.grant) ? v : { ok: false, reason: "override_replayed", grantId: v.grant.id };
    },
    claim: (grant) => used.claim(grant.id, grant.expiresAt),
    verify(header, tenant, destination) {
      const now = clock.now();
      used.prune(now);
      const parsed = parse(header);
      if (!parsed) return { ok: false, reason: "override_malformed", grantId: "" };
      const { grant, approvals } = parsed;
      const fail = (reason: Exclude<OverrideCheck, { ok: true }>["reason"]): OverrideCheck => ({
        ok: false,
        reason,
        grantId: grant.id,
      });
      const valid = new Set<string>();
      for (const a of approvals) {
        const secret = Object.hasOwn(approvers, a.approver) ? approvers[a.approver] : undefined;
        if (secret === undefined) continue;
        // A signature from a known approver that does not match means the grant was altered.
        if (!timingSafeEqual(hmac(secret, grant), Buffer.from(a.sig, "hex"))) return fail("override_tampered");
        valid.add(a.approver);
      }
      if (valid.size < requiredApprovals) return fail("override_insufficient_approvals");
      if (grant.expiresAt - grant.issuedAt > MAX_OVERRIDE_TTL_MS || grant.expiresAt <= grant.issuedAt)
        return fail("override_bad_validity");
      if (now >= grant.expiresAt || now < grant.issuedAt - 60_000) return fail("override_expired");
      if (grant.tenant !== tenant || !destinationAllowed(grant.destinations, destination))
        return fail("override_scope_mismatch");
      return { ok: true, grant, approvers: [...valid].sort() };
    },
  };
  return verifier;
}
