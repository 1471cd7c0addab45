import { Code, ConnectError } from "@connectrpc/connect";
import { TENANT_PATTERN, TENANT_PROBLEM } from "./tenant.js";

// The one vocabulary of errors that cross the RPC boundary (DESIGN.md, "Bad input and failure").
// A message that names a field reads "<field>: <problem>": the access log keeps only the part
// before the first colon of a caller error, since the problem may echo the input.

/** INVALID_ARGUMENT naming the field: "<field>: <problem>". */
export function invalidArgument(field: string, problem: string): ConnectError {
  return new ConnectError(`${field}: ${problem}`, Code.InvalidArgument);
}

/** Throws INVALID_ARGUMENT naming `field` unless `tenant` matches TENANT_PATTERN. */
export function checkTenant(tenant: string, field = "tenant"): void {
  if (!TENANT_PATTERN.test(tenant)) throw invalidArgument(field, TENANT_PROBLEM);
}

/** NOT_FOUND: "<kind> <id> not found", or "<kind> not found" when the id is not worth echoing. */
export function notFound(kind: string, id?: string): ConnectError {
  return new ConnectError(id === undefined ? `${kind} not found` : `${kind} ${id} not found`, Code.NotFound);
}

/** ALREADY_EXISTS: "<kind> <id> already exists", then `: <detail>` when given. */
export function alreadyExists(kind: string, id: string, detail?: string): ConnectError {
  return new ConnectError(`${kind} ${id} already exists${detail ? `: ${detail}` : ""}`, Code.AlreadyExists);
}

/** FAILED_PRECONDITION: the system's state refuses the call as sent (a reused key, a blocked destination). */
export function failedPrecondition(reason: string): ConnectError {
  return new ConnectError(reason, Code.FailedPrecondition);
}

/** UNAUTHENTICATED: no usable credential. The reason stays generic; details go to the log and audit. */
export function unauthenticated(reason = "unauthenticated"): ConnectError {
  return new ConnectError(reason, Code.Unauthenticated);
}

/** PERMISSION_DENIED; `headers` go to the client as trailers (e.g. the egress reason). */
export function permissionDenied(reason = "permission denied", headers?: Record<string, string>): ConnectError {
  return new ConnectError(reason, Code.PermissionDenied, headers);
}

// Retry-After is whole seconds (RFC 9110 §10.2.3); a wait under a second still says 1.
function retryAfter(ms: number | undefined, headers: Record<string, string> = {}): Record<string, string> {
  return ms === undefined ? headers : { ...headers, "retry-after": String(Math.max(1, Math.ceil(ms / 1000))) };
}

/**
 * UNAVAILABLE: a dependency is down or busy, or the server sheds or stops. `retryAfterMs` becomes
 * Retry-After for HTTP callers and grpc-retry-pushback-ms (gRPC A6 server pushback) for gRPC ones.
 */
export function unavailable(reason: string, retryAfterMs?: number): ConnectError {
  const pushback: Record<string, string> =
    retryAfterMs === undefined ? {} : { "grpc-retry-pushback-ms": String(retryAfterMs) };
  return new ConnectError(reason, Code.Unavailable, retryAfter(retryAfterMs, pushback));
}

/** RESOURCE_EXHAUSTED: over a limit; `retryAfterMs` becomes Retry-After, `headers` add e.g. the limit's state. */
export function resourceExhausted(
  reason: string,
  retryAfterMs?: number,
  headers?: Record<string, string>,
): ConnectError {
  return new ConnectError(reason, Code.ResourceExhausted, retryAfter(retryAfterMs, headers));
}

/** DEADLINE_EXCEEDED. */
export function deadlineExceeded(reason = "deadline exceeded"): ConnectError {
  return new ConnectError(reason, Code.DeadlineExceeded);
}

/** CANCELED: the caller went away or the call was aborted. */
export function canceled(reason = "call cancelled"): ConnectError {
  return new ConnectError(reason, Code.Canceled);
}

/** INTERNAL without the internal message; `correlationId` lets an operator find the logged cause. */
export function internalError(correlationId?: string): ConnectError {
  return new ConnectError(
    correlationId ? `internal error (request ${correlationId})` : "internal error",
    Code.Internal,
  );
}
