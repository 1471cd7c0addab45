"""Trace context flows from the kernel's call through the handler into the calls it makes."""

from __future__ import annotations

import unittest

from nops_agent import telemetry
from support import FakeKernel, call_agent
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
        r = call_agent(f"127.0.0.1:{self.agent.port}", "relay", b"x", timeout=3, metadata=(("traceparent", TRACEPARENT),))
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
