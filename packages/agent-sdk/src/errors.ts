import { Code, ConnectError } from "@connectrpc/connect";

/** Base class of every error the SDK throws; `code` is the gRPC code when the kernel answered. */
export class AgentSdkError extends Error {
  override name = "AgentSdkError";
  /** The gRPC status code, when the error came from a call. */
  readonly code: Code | undefined;
  constructor(message: string, options: { cause?: unknown; code?: Code } = {}) {
    super(message, { cause: options.cause });
    this.code = options.code;
  }
}

/** An option is missing or malformed; the message names the option. */
export class ConfigurationError extends AgentSdkError {
  override name = "ConfigurationError";
}

/** The agent's identity (SVID, bundle or API key) could not be obtained or used. */
export class IdentityError extends AgentSdkError {
  override name = "IdentityError";
}

/** The kernel refused the registration; for ALREADY_EXISTS the idempotency key was used with other content. */
export class RegistrationError extends AgentSdkError {
  override name = "RegistrationError";
}

/** The kernel could not be reached (UNAVAILABLE, DEADLINE_EXCEEDED, connection refused). */
export class KernelUnavailableError extends AgentSdkError {
  override name = "KernelUnavailableError";
}

/** The kernel refused the caller: UNAUTHENTICATED or PERMISSION_DENIED. */
export class PermissionError extends AgentSdkError {
  override name = "PermissionError";
}

/** A kernel call failed for any other reason (the gRPC `code` says which). */
export class KernelCallError extends AgentSdkError {
  override name = "KernelCallError";
}

/** The agent is draining or stopped and no longer accepts the operation. */
export class AgentStoppedError extends AgentSdkError {
  override name = "AgentStoppedError";
}

/**
 * Thrown by a capability handler to answer with a specific gRPC status (e.g. INVALID_ARGUMENT);
 * any other error is answered INTERNAL without its message.
 */
export class HandlerError extends AgentSdkError {
  override name = "HandlerError";
  constructor(code: Code, message: string) {
    super(message, { code });
  }
}

/** Turns whatever a kernel call threw into one of the typed errors above. */
export function toSdkError(what: string, err: unknown): AgentSdkError {
  if (err instanceof AgentSdkError) return err;
  const ce = ConnectError.from(err);
  const message = `${what}: ${ce.rawMessage}`;
  switch (ce.code) {
    case Code.Unavailable:
    case Code.DeadlineExceeded:
      return new KernelUnavailableError(message, { cause: err, code: ce.code });
    case Code.Unauthenticated:
    case Code.PermissionDenied:
      return new PermissionError(message, { cause: err, code: ce.code });
    default:
      return new KernelCallError(message, { cause: err, code: ce.code });
  }
}
