"""Typed exceptions of the SDK: every error it raises is a NopsError."""

from __future__ import annotations

from typing import Optional

import grpc

__all__ = [
    "NopsError",
    "ConfigError",
    "IdentityError",
    "KernelError",
    "KernelUnavailableError",
    "RegistrationError",
    "ApiKeyRotationError",
    "HandlerError",
    "AgentStoppedError",
]


class NopsError(Exception):
    """Base class of every error the SDK raises."""


class ConfigError(NopsError, ValueError):
    """An option is missing or invalid; the message names the option."""


class IdentityError(NopsError):
    """No usable identity: the SVID files, the Workload API or the API key failed."""


class KernelError(NopsError):
    """The kernel answered a call with an error.

    ``code`` is the gRPC status code and ``details`` the kernel's message.
    """

    def __init__(self, method: str, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{method}: {code.name}: {details}")
        self.method = method
        self.code = code
        self.details = details

    @classmethod
    def from_rpc_error(cls, method: str, err: grpc.RpcError) -> "KernelError":
        """Wraps a grpc.RpcError, choosing KernelUnavailableError for transient codes."""
        code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
        details = (err.details() if hasattr(err, "details") else "") or ""
        kind = KernelUnavailableError if code in TRANSIENT_CODES else cls
        return kind(method, code, details)


class KernelUnavailableError(KernelError):
    """The kernel could not be reached in time (UNAVAILABLE or DEADLINE_EXCEEDED); safe to retry."""


class RegistrationError(KernelError):
    """RegisterAgent was refused (bad input, permission, or an idempotency key reused with other content)."""


class ApiKeyRotationError(NopsError):
    """RotateApiKey failed; the current key stays in use."""


class AgentStoppedError(NopsError):
    """The agent was stopped (or is draining) and cannot do what was asked."""


class HandlerError(NopsError):
    """Raise from a handler to answer the caller with this gRPC status.

    Any other exception answers INTERNAL with a generic message, so internals never leak.
    """

    def __init__(self, message: str, code: grpc.StatusCode = grpc.StatusCode.INVALID_ARGUMENT) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


#: Status codes after which the same call may simply be retried.
TRANSIENT_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


def status_of(err: BaseException) -> Optional[grpc.StatusCode]:
    """The gRPC status code of an RpcError or KernelError, None for anything else."""
    if isinstance(err, KernelError):
        return err.code
    if isinstance(err, grpc.RpcError) and hasattr(err, "code"):
        return err.code()
    return None
