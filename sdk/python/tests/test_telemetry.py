"""Trace context flows from the kernel's call through the handler into the calls it makes."""

from __future__ import annotations

import unittest

from nops_agent import telemetry
from support import FakeKernel, call_agent, wait_for
from test_agent import make_agent

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


class TraceContextTest(unittest.TestCase):
    def setUp(self) -> None:
        self.kernel = FakeKernel()
        self.addCleanup(self.kernel.stop)
        self.agent = make_agent(self.kernel)
        self.seen = {}

        @self.agent.handle("relay")
        def relay(inv):
            if telemetry.HAVE_OTEL:
                from opentelemetry import trace

                self.seen["current"] = format(trace.get_current_span().get_span_context().trace_id, "032x")
            return self.agent.invoke("next", inv.payload).payload

        self.agent.start()
        self.addCleanup(self.agent.stop, 0)

    def test_calls_made_by_a_handler_continue_the_callers_trace_within_its_deadline(self) -> None:
        r = call_agent(
            f"127.0.0.1:{self.agent.port}", "relay", b"x", timeout=3, metadata=(("traceparent", TRACEPARENT),)
        )
        self.assertEqual(r.payload, b"x")
        sent = self.kernel.routing.calls[0]
        self.assertEqual(sent["metadata"]["traceparent"].split("-")[1], TRACE_ID)
        # The invoke inherits what is left of the incoming deadline, not the SDK's default timeout.
        self.assertLessEqual(sent["remaining"], 3.1)
        if telemetry.HAVE_OTEL:
            self.assertEqual(self.seen["current"], TRACE_ID)

    def test_trace_context_in_the_message_is_used_when_metadata_lost_it(self) -> None:
        from nops_agent._gen.nops.agent.v1 import agent_pb2, agent_pb2_grpc
        import grpc

        channel = grpc.insecure_channel(f"127.0.0.1:{self.agent.port}")
        self.addCleanup(channel.close)
        inv = agent_pb2.Invocation(capability="relay", payload=b"y", traceparent=TRACEPARENT)
        agent_pb2_grpc.AgentServiceStub(channel).Handle(agent_pb2.HandleRequest(invocation=inv), timeout=3)
        self.assertEqual(self.kernel.routing.calls[0]["metadata"]["traceparent"].split("-")[1], TRACE_ID)


if __name__ == "__main__":
    unittest.main()


class RecordingMeterProvider:
    """A MeterProvider that keeps every measurement (the OpenTelemetry metrics API's shape)."""

    def __init__(self) -> None:
        self.points = []

    def get_meter(self, name, version=None, *args, **kwargs):
        provider = self

        class Instrument:
            def __init__(self, name):
                self.name = name

            def add(self, value, attributes=None):
                provider.points.append((self.name, value, dict(attributes or {})))

            record = add

        class Meter:
            def create_counter(self, name, unit="", description=""):
                return Instrument(name)

            create_histogram = create_counter
            create_up_down_counter = create_counter

        return Meter()

    def named(self, name):
        return [(v, a) for n, v, a in self.points if n == name]


class MetricsTest(unittest.TestCase):
    def test_records_the_typescript_sdks_instruments(self) -> None:
        import grpc

        from nops_agent import HandlerError

        kernel = FakeKernel()
        self.addCleanup(kernel.stop)
        meters = RecordingMeterProvider()
        agent = make_agent(kernel, meter_provider=meters)
        agent.handle("ok", lambda inv: b"")

        def bad(inv):
            raise HandlerError("no")

        agent.handle("bad", bad)
        agent.start()
        self.addCleanup(agent.stop, 0)
        call_agent(f"127.0.0.1:{agent.port}", "ok")
        with self.assertRaises(grpc.RpcError):
            call_agent(f"127.0.0.1:{agent.port}", "bad")
        self.assertEqual(
            meters.named("nops.agent.invocations"),
            [(1, {"capability": "ok", "outcome": "ok"}), (1, {"capability": "bad", "outcome": "error"})],
        )
        self.assertEqual(len(meters.named("nops.agent.invocation.duration")), 2)
        self.assertEqual(sum(v for v, _ in meters.named("nops.agent.invocations.in_flight")), 0)
        self.assertEqual(meters.named("nops.agent.registrations"), [(1, {"kind": "register", "replayed": False})])
        self.assertTrue(wait_for(lambda: (1, {"outcome": "ok"}) in meters.named("nops.agent.heartbeats")))
        kernel.registry.fail["Heartbeat"] = [(grpc.StatusCode.INTERNAL, "before")]
        self.assertTrue(
            wait_for(
                lambda: (1, {"method": "Heartbeat", "code": "INTERNAL"})
                in meters.named("nops.agent.kernel_call_errors")
            )
        )
