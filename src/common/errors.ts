/** Base for internal errors: a stable `name` and an optional `cause`, never sent to clients. */
export class KernelError extends Error {
  override name = "KernelError";
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
  }
}

/** Configuration that cannot be used; the message names the field. */
export class ConfigError extends KernelError {
  override name = "ConfigError";
}

/** A store operation failed (SQLite busy, read-only, disk full, ...). */
export class StoreError extends KernelError {
  override name = "StoreError";
}
