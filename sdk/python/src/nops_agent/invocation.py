"""What a handler receives (Invocation) and may return (Reply)."""

from __future__ import annotations

import contextvars
import datetime as _dt
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Union

import grpc

__all__ = ["Invocation", "Reply", "current_invocation", "encode_result"]


@dataclass
class Reply:
    """A handler's answer with an explicit content type (return bytes, str or JSON data for the common cases)."""

    #: Response body.
    payload: bytes
    #: Media type of ``payload``.
    content_type: str = "application/octet-stream"


@dataclass
class Invocation:
    """One call of a capability, as the kernel sent it."""

    #: Capability name, e.g. ``"summarize"``.
    capability: str
    #: Tenant the work is done for.
    tenant: str
    #: Request body; its format is the capability's contract.
    payload: bytes
    #: Media type of ``payload`` ("" when the capability fixes it).
    content_type: str
    #: Absolute deadline of this call (UTC), None when the caller set none.
    deadline: Optional[_dt.datetime]
    #: W3C traceparent of the caller ("" when there is none).
    traceparent: str
    #: W3C tracestate of the caller.
    tracestate: str
    #: Correlation id of the kernel request.
    request_id: str
    #: 1 for the first attempt, higher for retries and hedges of the same request.
    attempt: int
    #: The gRPC metadata of the call (lower-case keys; text values only).
    metadata: Dict[str, str] = field(default_factory=dict)
    #: SPIFFE ID of the caller's certificate (the kernel's), "" over plaintext.
    caller_id: str = ""
    _context: Any = field(default=None, repr=False)
    _cancelled: threading.Event = field(default_factory=threading.Event, repr=False)

    def time_remaining(self) -> Optional[float]:
        """Seconds left before the deadline (never negative), None without a deadline."""
        if self._context is not None:
            remaining = self._context.time_remaining()
            if remaining is not None:
                return max(0.0, remaining)
        if self.deadline is None:
            return None
        return max(0.0, self.deadline.timestamp() - time.time())

    def cancelled(self) -> bool:
        """True once the caller cancelled or the deadline passed: stop working and return."""
        if self._cancelled.is_set():
            return True
        return self._context is not None and not self._context.is_active()

    def wait_cancelled(self, timeout: Optional[float] = None) -> bool:
        """Blocks until the call is cancelled (True) or ``timeout`` seconds passed (False)."""
        return self._cancelled.wait(timeout)

    def text(self, encoding: str = "utf-8") -> str:
        """The payload decoded as text."""
        return self.payload.decode(encoding)

    def json(self) -> Any:
        """The payload parsed as JSON."""
        return json.loads(self.payload or b"null")


_current: "contextvars.ContextVar[Optional[Invocation]]" = contextvars.ContextVar("nops_invocation", default=None)


def current_invocation() -> Optional[Invocation]:
    """The invocation being served by this thread or task (None outside a handler)."""
    return _current.get()


def encode_result(value: Union[Reply, bytes, bytearray, memoryview, str, Any]) -> Reply:
    """A handler's return value as a Reply: bytes as-is, str as UTF-8 text, anything else as JSON."""
    if isinstance(value, Reply):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return Reply(bytes(value), "application/octet-stream")
    if isinstance(value, str):
        return Reply(value.encode("utf-8"), "text/plain; charset=utf-8")
    return Reply(json.dumps(value, separators=(",", ":")).encode("utf-8"), "application/json")


def invocation_from(
    inv_msg: Any, context: Optional[grpc.ServicerContext], metadata: Dict[str, str], caller_id: str = ""
) -> Invocation:
    """Builds an Invocation from the proto and the call's metadata (metadata wins for trace context:
    the message copies are for proxies that drop it)."""
    deadline: Optional[_dt.datetime] = None
    if inv_msg.HasField("deadline"):
        deadline = inv_msg.deadline.ToDatetime().replace(tzinfo=_dt.timezone.utc)
    elif context is not None and context.time_remaining() is not None:
        deadline = _dt.datetime.now(_dt.timezone.utc) + _dt.timedelta(seconds=context.time_remaining())
    return Invocation(
        capability=inv_msg.capability,
        tenant=inv_msg.tenant,
        payload=bytes(inv_msg.payload),
        content_type=inv_msg.content_type,
        deadline=deadline,
        traceparent=metadata.get("traceparent") or inv_msg.traceparent,
        tracestate=metadata.get("tracestate") or inv_msg.tracestate,
        request_id=inv_msg.request_id,
        attempt=inv_msg.attempt or 1,
        metadata=metadata,
        caller_id=caller_id,
        _context=context,
    )
