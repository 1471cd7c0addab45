import { create } from "@bufbuild/protobuf";
import { durationMs, timestampFromMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, type HandlerContext, type ServiceImpl } from "@connectrpc/connect";
import type { AuditLog } from "../../audit/index.js";
import {
  checkTenant,
  internalError,
  invalidArgument,
  notFound,
  permissionDenied,
  unauthenticated,
} from "../../common/index.js";
import type { Db } from "../../store/index.js";
import type { Logger } from "../../telemetry/index.js";
import { kCorrelationId } from "../../server/index.js";
import { parseScopeGrant } from "../scope.js";
import { INVOKE_GRANT_PROBLEM, isInvokeGrant } from "../invoke-grant.js";
import {
  ApiKeySchema,
  Role as RoleEnum,
  type ApiKey,
  type ApiKeyService,
} from "../../../gen/nops/kernel/v1/api_key_pb.js";
import { isAllTenants, kPrincipal, type Principal, type Role } from "../principal.js";
import { KEY_ID_PATTERN, type ApiKeyOptions, type ApiKeyRecord, type ApiKeyStore } from "./api-key-store.js";

/** What the ApiKeyService handler needs. */
export interface ApiKeyServiceDeps {
  db: Db;
  store: ApiKeyStore;
  audit: AuditLog;
  /** Component logger (child "api-keys"). */
  logger: Logger;
  /** Grace limits; the pepper is the store's business. */
  options: Pick<ApiKeyOptions, "defaultGraceMs" | "maxGraceMs">;
}

const ROLE_TO_ENUM: Record<Role, RoleEnum> = {
  SUPER_ADMIN: RoleEnum.SUPER_ADMIN,
  ADMIN: RoleEnum.ADMIN,
  OPERATOR: RoleEnum.OPERATOR,
  VIEWER: RoleEnum.VIEWER,
  AGENT: RoleEnum.AGENT,
};
// An API key is never SUPER_ADMIN: a leaked key must not reach every tenant.
const KEY_ROLES = new Map<RoleEnum, Role>([
  [RoleEnum.ADMIN, "ADMIN"],
  [RoleEnum.OPERATOR, "OPERATOR"],
  [RoleEnum.VIEWER, "VIEWER"],
  [RoleEnum.AGENT, "AGENT"],
]);
const MAX_PAGE_SIZE = 1000;
const DEFAULT_PAGE_SIZE = 100;
const AGENT_ID_PATTERN = /^[A-Za-z0-9._:-]{1,128}$/;
const MAX_INVOKE_GRANTS = 256;

function toProto(r: ApiKeyRecord): ApiKey {
  return create(ApiKeySchema, {
    keyId: r.keyId,
    tenant: r.tenant,
    agentId: r.agentId,
    name: r.name,
    role: ROLE_TO_ENUM[r.role],
    scopes: r.scopes,
    invokeGrants: r.invoke,
    createTime: timestampFromMs(r.createdAt),
    createdBy: r.createdBy,
    rotateTime: r.rotatedAt === undefined ? undefined : timestampFromMs(r.rotatedAt),
    graceExpireTime: r.graceUntil === undefined ? undefined : timestampFromMs(r.graceUntil),
    revokeTime: r.revokedAt === undefined ? undefined : timestampFromMs(r.revokedAt),
  });
}

function checkKeyId(keyId: string): void {
  if (!KEY_ID_PATTERN.test(keyId)) throw invalidArgument("key_id", "must be 24 lowercase hex characters");
}

/**
 * Creates the ApiKeyService handler. Callable by SUPER_ADMIN, and by ADMIN for its own tenant;
 * every call, allowed or not, leaves an audit row ("apikey.create|rotate|revoke|list").
 */
export function createApiKeyService(deps: ApiKeyServiceDeps): ServiceImpl<typeof ApiKeyService> {
  const { db, store, audit, logger } = deps;

  // Runs `body` for an admin of `tenant` (undefined: the call targets every tenant) and audits the
  // outcome. Input is validated inside `body`, so a caller who may not call learns nothing from it.
  function guarded<T>(
    ctx: HandlerContext,
    action: string,
    tenant: string | undefined,
    resource: string,
    body: (actor: Principal) => { result: T; details?: Record<string, unknown>; resource?: string },
    selfKeyId?: string,
  ): T {
    const principal = ctx.values.get(kPrincipal);
    const correlationId = ctx.values.get(kCorrelationId);
    const actor = principal?.id ?? "anonymous";
    const record = (outcome: string, res: string, details: Record<string, unknown>): void => {
      // The tenant is caller input until validated: bound what reaches the audit row.
      audit.append({
        actor,
        action,
        tenant: (tenant ?? "").slice(0, 63),
        resource: res.slice(0, 100),
        outcome,
        details,
        correlationId,
      });
    };
    if (!principal) {
      record("denied", resource, { reason: "no principal" });
      throw unauthenticated();
    }
    const admin = principal.roles.includes("SUPER_ADMIN") || principal.roles.includes("ADMIN");
    // A key may rotate itself (an agent keeping its own credential fresh), nothing more.
    const self = selfKeyId !== undefined && principal.id === `apikey:${selfKeyId}`;
    // An ADMIN acts only on its own tenant; listing every tenant (tenant undefined) needs SUPER_ADMIN.
    if (!(admin || self) || (!isAllTenants(principal) && (tenant === undefined || principal.tenant !== tenant))) {
      record("denied", resource, { reason: admin || self ? "other tenant" : "not an admin" });
      throw permissionDenied();
    }
    try {
      // The change and its audit row commit together.
      return db.transaction(() => {
        const out = body(principal);
        record("ok", out.resource ?? resource, out.details ?? {});
        return out.result;
      })();
    } catch (e) {
      const err = ConnectError.from(e);
      if (err.code === Code.Internal || err.code === Code.Unknown)
        logger.error({ err: e, action, correlationId }, "api key operation failed");
      try {
        record(err.code === Code.PermissionDenied ? "denied" : "error", resource, { code: Code[err.code] });
      } catch (auditError) {
        logger.error({ err: auditError, correlationId }, "audit append failed");
      }
      throw err.code === Code.Internal || err.code === Code.Unknown ? internalError() : err;
    }
  }

  return {
    async createApiKey(req, ctx) {
      return guarded(ctx, "apikey.create", req.tenant, "apikey/new", (actor) => {
        checkTenant(req.tenant);
        const name = req.name.trim();
        if (name.length === 0 || name.length > 100) throw invalidArgument("name", "must be 1..100 characters");
        if (req.agentId !== "" && !AGENT_ID_PATTERN.test(req.agentId))
          throw invalidArgument("agent_id", "must be 1..128 of [A-Za-z0-9._:-]");
        const role = KEY_ROLES.get(req.role);
        if (!role) throw invalidArgument("role", "must be ROLE_ADMIN, ROLE_OPERATOR, ROLE_VIEWER or ROLE_AGENT");
        req.scopes.forEach((s, i) => {
          const g = parseScopeGrant(s);
          if (!g)
            throw invalidArgument(`scopes[${i}]`, 'must be "service/operation[/tenant]", each part a name or "*"');
          if (g.tenant !== "*" && g.tenant !== req.tenant)
            throw invalidArgument(`scopes[${i}]`, "may name only the key's own tenant");
        });
        if (req.invokeGrants.length > MAX_INVOKE_GRANTS)
          throw invalidArgument("invoke_grants", `must list at most ${MAX_INVOKE_GRANTS} grants`);
        req.invokeGrants.forEach((g, i) => {
          if (!isInvokeGrant(g)) throw invalidArgument(`invoke_grants[${i}]`, INVOKE_GRANT_PROBLEM);
        });
        const invoke = [...new Set(req.invokeGrants)];
        const issued = store.create({
          tenant: req.tenant,
          agentId: req.agentId,
          name,
          role,
          scopes: [...req.scopes],
          invoke,
          createdBy: actor.id,
        });
        return {
          result: { apiKey: toProto(issued.record), secret: issued.key },
          resource: `apikey/${issued.record.keyId}`,
          details: { name, role, agentId: req.agentId, invokeGrants: invoke },
        };
      });
    },

    async rotateApiKey(req, ctx) {
      return guarded(
        ctx,
        "apikey.rotate",
        req.tenant,
        `apikey/${req.keyId}`,
        () => {
          checkTenant(req.tenant);
          checkKeyId(req.keyId);
          let graceMs = deps.options.defaultGraceMs;
          if (req.gracePeriod) {
            graceMs = durationMs(req.gracePeriod);
            if (!Number.isFinite(graceMs) || graceMs < 0 || graceMs > deps.options.maxGraceMs) {
              throw invalidArgument("grace_period", `must be between 0 and ${deps.options.maxGraceMs} ms`);
            }
          }
          const issued = store.rotate(req.tenant, req.keyId, graceMs);
          if (!issued) throw notFound("api key");
          return { result: { apiKey: toProto(issued.record), secret: issued.key }, details: { graceMs } };
        },
        req.keyId,
      );
    },

    async revokeApiKey(req, ctx) {
      return guarded(ctx, "apikey.revoke", req.tenant, `apikey/${req.keyId}`, () => {
        checkTenant(req.tenant);
        checkKeyId(req.keyId);
        if (req.reason.length > 500) throw invalidArgument("reason", "must be at most 500 characters");
        const record = store.revoke(req.tenant, req.keyId);
        if (!record) throw notFound("api key");
        return { result: { apiKey: toProto(record) }, details: { reason: req.reason } };
      });
    },

    async listApiKeys(req, ctx) {
      // Only SUPER_ADMIN may leave the tenant empty to list every tenant (guarded checks that).
      const tenant = req.tenant === "" ? undefined : req.tenant;
      return guarded(ctx, "apikey.list", tenant, "apikey/*", () => {
        if (tenant !== undefined) checkTenant(tenant);
        if (req.pageSize > MAX_PAGE_SIZE) throw invalidArgument("page_size", `must be at most ${MAX_PAGE_SIZE}`);
        let afterKeyId = "";
        if (req.pageToken !== "") {
          afterKeyId = Buffer.from(req.pageToken, "base64url").toString("utf8");
          if (!KEY_ID_PATTERN.test(afterKeyId)) throw invalidArgument("page_token", "is not a token from ListApiKeys");
        }
        const limit = req.pageSize === 0 ? DEFAULT_PAGE_SIZE : req.pageSize;
        const page = store.list({ tenant, includeRevoked: req.includeRevoked, afterKeyId, limit: limit + 1 });
        const more = page.length > limit;
        const keys = more ? page.slice(0, limit) : page;
        const last = keys.at(-1);
        return {
          result: {
            apiKeys: keys.map(toProto),
            nextPageToken: more && last ? Buffer.from(last.keyId).toString("base64url") : "",
          },
          details: { count: keys.length },
        };
      });
    },
  };
}
