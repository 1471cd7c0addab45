import { Code, ConnectError } from "@connectrpc/connect";
import { StoreError, canceled, internalError, unavailable } from "../common/index.js";

// better-sqlite3 throws SqliteError with an extended result code such as "SQLITE_BUSY_SNAPSHOT".
function sqliteCode(err: unknown): string | undefined {
  return err instanceof Error && err.name === "SqliteError" ? (err as Error & { code?: string }).code : undefined;
}

/**
 * The one place where internal and infrastructure errors become RPC errors. Messages of
 * non-ConnectErrors never reach the client; the caller logs them with the correlation id.
 */
export function toConnectError(err: unknown, correlationId: string): ConnectError {
  if (err instanceof ConnectError) return err;
  const sqlite = sqliteCode(err);
  if (sqlite?.startsWith("SQLITE_BUSY") || sqlite?.startsWith("SQLITE_LOCKED")) {
    return unavailable(`storage busy, retry (request ${correlationId})`);
  }
  if (
    sqlite?.startsWith("SQLITE_READONLY") ||
    sqlite?.startsWith("SQLITE_FULL") ||
    sqlite?.startsWith("SQLITE_IOERR") ||
    err instanceof StoreError
  ) {
    return unavailable(`storage unavailable (request ${correlationId})`);
  }
  if (err instanceof Error && err.name === "AbortError") {
    return canceled();
  }
  return internalError(correlationId);
}

/** True for codes that mean the caller did something wrong, not the kernel. */
export function isClientError(code: Code): boolean {
  return [
    Code.InvalidArgument,
    Code.NotFound,
    Code.AlreadyExists,
    Code.PermissionDenied,
    Code.Unauthenticated,
    Code.FailedPrecondition,
    Code.OutOfRange,
    Code.ResourceExhausted,
    Code.Canceled,
  ].includes(code);
}
