"""publish() and subscribe() against an in-memory event bus."""

from __future__ import annotations

import unittest

import grpc

from nops_agent import KernelUnavailableError
from nops_agent._gen.nops.kernel.v1 import event_bus_pb2
from support import FakeKernel, wait_for
from test_agent import make_agent


class EventsTest(unittest.TestCase):
    def setUp(self) -> None:
        self.kernel = FakeKernel()
        self.addCleanup(self.kernel.stop)
        self.agent = make_agent(self.kernel)
        self.agent.handle("x", lambda inv: b"")
        self.agent.start()
        self.addCleanup(self.agent.stop, 0)

    def test_publish_retries_under_one_key_and_records_once(self) -> None:
        bus = self.kernel.events
        # The first attempt is written but its answer is lost: the retry must not write it again.
        bus.fail_publish = [grpc.StatusCode.UNAVAILABLE]
        r = self.agent.publish("orders.created.v1", {"id": 7})
        self.assertEqual(len(bus.published), 1)
        self.assertTrue(r.duplicate)
        self.assertEqual((r.event_id, r.subject), ("e1", "orders.created.v1"))
        self.assertEqual(bus.published[0].tenant, "t1")
        self.assertEqual(bus.published[0].payload, b'{"id":7}')
        self.assertTrue(bus.published[0].idempotency_key)

    def test_publish_gives_up_after_its_attempts(self) -> None:
        self.kernel.events.fail_publish = [grpc.StatusCode.UNAVAILABLE] * 3
        with self.assertRaises(KernelUnavailableError):
            self.agent.publish("a.b", b"x", attempts=2, idempotency_key="k1")

    def test_subscribe_acks_handled_events_naks_failures_and_survives_a_broken_stream(self) -> None:
        bus = self.kernel.events
        bus.break_next_stream = True
        seen = []

        def handler(event):
            seen.append((event.event_id, event.delivery_count, event.payload))
            if event.payload == b"poison" and event.delivery_count == 1:
                raise ValueError("first delivery fails")

        sub = self.agent.subscribe("workers", handler, filter="jobs.>")
        self.addCleanup(sub.close)
        self.agent.publish("jobs.a", b"ok")
        self.agent.publish("jobs.b", b"poison")
        self.assertTrue(wait_for(lambda: len(bus.acks) == 3, timeout=5))
        self.assertGreaterEqual(bus.subscribes, 2)
        self.assertEqual(seen, [("e1", 1, b"ok"), ("e2", 1, b"poison"), ("e2", 2, b"poison")])
        self.assertEqual(
            [a for _, a in bus.acks],
            [event_bus_pb2.ACK_ACTION_ACK, event_bus_pb2.ACK_ACTION_NAK, event_bus_pb2.ACK_ACTION_ACK],
        )


if __name__ == "__main__":
    unittest.main()
