"""OpenTelemetry metrics and traces when `opentelemetry-api` is installed; no-ops otherwise.

Only the API is used: the application installs an SDK and exporters (or not), as OpenTelemetry
intends for libraries. The tracer and meter are fetched per Telemetry so a provider installed
after import is still used.
"""

from __future__ import annotations

import contextlib
from typing import Any, Dict, Iterator, Mapping, Optional, Sequence, Tuple

try:  # optional dependency
    from opentelemetry import context as otel_context
    from opentelemetry import metrics as otel_metrics
    from opentelemetry import propagate as otel_propagate
    from opentelemetry import trace as otel_trace

    HAVE_OTEL = True
except ImportError:  # pragma: no cover - exercised when opentelemetry is absent
    HAVE_OTEL = False

__all__ = ["Telemetry", "HAVE_OTEL"]

INSTRUMENTATION = "nops_agent"


class Telemetry:
    """Spans and instruments of one agent; every method is cheap and safe without OpenTelemetry."""

    def __init__(self, agent_name: str, tracer_provider: Any = None, meter_provider: Any = None) -> None:
        # Traces need opentelemetry's context and propagators; metrics only a MeterProvider, so an
        # explicitly given one is used even where the opentelemetry package is absent.
        self.enabled = HAVE_OTEL
        self.metrics = HAVE_OTEL or meter_provider is not None
        self._attrs = {"nops.agent.name": agent_name}
        from . import __version__

        if HAVE_OTEL:
            self._tracer = (tracer_provider or otel_trace.get_tracer_provider()).get_tracer(
                INSTRUMENTATION, __version__
            )
        if not self.metrics:
            return
        meter = (meter_provider or otel_metrics.get_meter_provider()).get_meter(INSTRUMENTATION, __version__)
        # The TypeScript SDK's instruments and attributes, so one dashboard shows agents of both.
        self._calls = meter.create_counter("nops.agent.invocations", unit="1", description="Capability calls served")
        self._duration = meter.create_histogram(
            "nops.agent.invocation.duration", unit="ms", description="Time to serve a capability call"
        )
        self._in_flight = meter.create_up_down_counter(
            "nops.agent.invocations.in_flight", unit="1", description="Calls being served"
        )
        self._heartbeats = meter.create_counter("nops.agent.heartbeats", unit="1", description="Heartbeats by outcome")
        self._registrations = meter.create_counter(
            "nops.agent.registrations", unit="1", description="Registrations by kind"
        )
        self._kernel_errors = meter.create_counter(
            "nops.agent.kernel_call_errors", unit="1", description="Failed kernel calls"
        )

    def rename(self, agent_name: str) -> None:
        """Sets the agent name recorded on spans and metrics (known only once the SVID is)."""
        self._attrs["nops.agent.name"] = agent_name

    @contextlib.contextmanager
    def server_span(self, method: str, carrier: Mapping[str, str], attributes: Dict[str, Any]) -> Iterator[Any]:
        """A SERVER span continuing the caller's W3C trace context found in ``carrier``."""
        if not self.enabled:
            yield None
            return
        parent = otel_propagate.extract(carrier)
        token = otel_context.attach(parent)
        try:
            with self._tracer.start_as_current_span(
                f"nops.agent.v1.AgentService/{method}",
                kind=otel_trace.SpanKind.SERVER,
                attributes={**self._attrs, "rpc.system": "grpc", "rpc.method": method, **attributes},
            ) as span:
                yield span
        finally:
            otel_context.detach(token)

    @contextlib.contextmanager
    def client_span(self, method: str) -> Iterator[None]:
        """A CLIENT span around a call to the kernel."""
        if not self.enabled:
            yield
            return
        with self._tracer.start_as_current_span(
            method, kind=otel_trace.SpanKind.CLIENT, attributes={**self._attrs, "rpc.system": "grpc"}
        ):
            yield

    def inject(self, metadata: Dict[str, str]) -> bool:
        """Adds traceparent/tracestate of the current span; False when there is none to add."""
        if not self.enabled:
            return False
        otel_propagate.inject(metadata)
        return "traceparent" in metadata

    def record_error(self, span: Any, err: BaseException, code: str) -> None:
        """Marks a server span failed with the gRPC status it answered."""
        if span is None:
            return
        span.set_attribute("rpc.grpc.status_code", code)
        span.record_exception(err)
        span.set_status(otel_trace.Status(otel_trace.StatusCode.ERROR, code))

    def call_started(self, capability: str) -> None:
        """Counts a call in flight."""
        if self.metrics:
            self._in_flight.add(1, {"capability": capability})

    def call_ended(self, capability: str, code: str, duration_ms: float) -> None:
        """Records a finished call: outcome "ok" or "error", and its duration."""
        if not self.metrics:
            return
        self._in_flight.add(-1, {"capability": capability})
        attrs = {"capability": capability, "outcome": "ok" if code == "OK" else "error"}
        self._calls.add(1, attrs)
        self._duration.record(duration_ms, attrs)

    def heartbeat(self, outcome: str) -> None:
        """Counts a heartbeat by outcome ("ok" or the gRPC status name)."""
        if self.metrics:
            self._heartbeats.add(1, {"outcome": outcome})

    def registered(self, reregistered: bool, replayed: bool) -> None:
        """Counts a successful RegisterAgent."""
        if self.metrics:
            self._registrations.add(1, {"kind": "reregister" if reregistered else "register", "replayed": replayed})

    def kernel_error(self, method: str, code: str) -> None:
        """Counts a failed call to the kernel."""
        if self.metrics:
            self._kernel_errors.add(1, {"method": method, "code": code})


def metadata_carrier(metadata: Optional[Sequence[Tuple[str, Any]]]) -> Dict[str, str]:
    """gRPC invocation metadata as a plain dict for propagators (text values only)."""
    out: Dict[str, str] = {}
    for key, value in metadata or ():
        if isinstance(value, str):
            out[key.lower()] = value
    return out
