import type { DescMethod } from "@bufbuild/protobuf";
import { createContextValues, createHandlerContext } from "@connectrpc/connect";
import { createAuditLog, type AuditLog } from "../../src/audit/audit-log.js";
import { createManualClock, type ManualClock } from "../../src/common/clock.js";
import { openDatabase, type Db } from "../../src/store/database.js";
import { migrateUp } from "../../src/store/migrator.js";
import { MIGRATIONS } from "../../src/store/migrations/index.js";
import {
  kCorrelationId,
  kPeer,
  type CallHandler,
  type CallRequest,
  type CallResult,
} from "../../src/server/interceptor.js";
import { kPrincipal, type Principal } from "../../src/identity/principal.js";

/** An in-memory database with every migration, its audit log and a manual clock. */
export function openTestStore(): { db: Db; audit: AuditLog; clock: ManualClock } {
  const db = openDatabase({ path: ":memory:" });
  migrateUp(db, MIGRATIONS);
  const clock = createManualClock();
  return { db, audit: createAuditLog(db, clock), clock };
}

/** Options for a test call. */
export interface CallInit {
  principal?: Principal;
  headers?: Record<string, string>;
  certificates?: Uint8Array[];
  correlationId?: string;
  /** Peer address. @default "127.0.0.1:40000" */
  address?: string;
}

/** A CallRequest for `method` as a transport adapter would build it. */
export function makeCall(method: DescMethod, input: unknown, init: CallInit = {}): CallRequest {
  const values = createContextValues();
  values.set(kPeer, {
    address: init.address ?? "127.0.0.1:40000",
    transport: "grpc-js",
    certificates: init.certificates ?? [],
  });
  values.set(kCorrelationId, init.correlationId ?? "corr-test");
  if (init.principal) values.set(kPrincipal, init.principal);
  const ctx = createHandlerContext({
    service: method.parent,
    method,
    protocolName: "grpc",
    requestMethod: "POST",
    url: `http://127.0.0.1/${method.parent.typeName}/${method.name}`,
    requestHeader: init.headers ?? {},
    contextValues: values,
  });
  return { service: method.parent, method, ctx, input };
}

/** A terminal handler that records what reached it. */
export function recordingHandler(): { handler: CallHandler; calls: CallRequest[] } {
  const calls: CallRequest[] = [];
  const handler: CallHandler = async (call): Promise<CallResult> => {
    calls.push(call);
    if (call.method.methodKind === "server_streaming") {
      return { kind: "stream", output: (async function* () {})() };
    }
    return { kind: "unary", output: {} };
  };
  return { handler, calls };
}

/** A principal with sensible empty defaults. */
export function principal(p: Partial<Principal> & Pick<Principal, "id">): Principal {
  return { kind: "spiffe", tenant: undefined, roles: [], scopes: [], capabilities: [], ...p };
}

/** Audit rows, oldest first. */
export function auditRows(db: Db): {
  actor: string;
  action: string;
  tenant: string;
  outcome: string;
  correlation_id: string;
  details: string;
  resource: string;
}[] {
  return db
    .prepare("SELECT actor, action, tenant, outcome, correlation_id, details, resource FROM audit_log ORDER BY seq")
    .all() as never;
}
