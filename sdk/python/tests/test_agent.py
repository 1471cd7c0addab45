"""Agent lifecycle against an in-memory kernel: registration, heartbeats, serving, drain."""

from __future__ import annotations

import asyncio
import os
import tempfile
import threading
import time
import unittest

import grpc

from nops_agent import (
    ConfigError,
    HandlerError,
    RegistrationError,
    Reply,
    create_agent,
    current_invocation,
)
from support import FakeApiKeys, FakeKernel, call_agent, wait_for


def make_agent(kernel: FakeKernel, **kwargs):
    opts = dict(
        name="test-agent",
        tenant="t1",
        identity="none",
        kernel_address=kernel.address,
        heartbeat_interval=0.05,
        register_timeout=5,
        call_timeout=2,
        drain_timeout=5,
        drain_settle=0.01,
        handle_signals=False,
    )
    opts.update(kwargs)
    return create_agent(**opts)


class AgentTest(unittest.TestCase):
    def setUp(self) -> None:
        self.kernel = FakeKernel()
        self.addCleanup(self.kernel.stop)

    def start(self, agent):
        agent.start()
        self.addCleanup(agent.stop, 0)
        return agent

    def test_registers_with_capabilities_and_a_stable_idempotency_key(self) -> None:
        agent = make_agent(self.kernel, version="1.2.3", labels={"zone": "a"})
        agent.handle("summarize", lambda inv: "x", version="2.0.0", attributes={"model": "m"})
        self.start(agent)
        req = self.kernel.registry.register_calls[0]
        self.assertEqual(req.tenant, "t1")
        self.assertEqual(req.name, "test-agent")
        self.assertEqual(req.version, "1.2.3")
        self.assertEqual(req.endpoint, f"127.0.0.1:{agent.port}")
        self.assertEqual(
            [(c.name, c.version, dict(c.attributes)) for c in req.capabilities],
            [("summarize", "2.0.0", {"model": "m"})],
        )
        self.assertEqual(dict(req.labels), {"zone": "a"})
        self.assertRegex(req.idempotency_key, r"^sdk-[0-9a-f]{40}$")
        self.assertEqual(req.idempotency_key, agent.default_idempotency_key())
        self.assertIn(agent.agent_id, self.kernel.registry.agents)

    def test_idempotency_key_is_the_typescript_sdks(self) -> None:
        # createAgent({tenant: "acme", name: "n", version: "1", endpoint: "h:1", labels: {b: "2", a: "1"},
        #   capabilities: {x: {version: "2", attributes: {m: "v"}}, a: {}}}) derives this key.
        agent = make_agent(
            self.kernel, tenant="acme", name="n", version="1", endpoint="h:1", labels={"b": "2", "a": "1"}
        )
        agent.handle("x", lambda inv: b"", version="2", attributes={"m": "v"})
        agent.handle("a", lambda inv: b"")
        agent.tenant, agent.endpoint = "acme", "h:1"
        import hashlib

        canonical = '["acme","n","1","h:1",[["a","1.0.0",{}],["x","2",{"m":"v"}]],{"a":"1","b":"2"}]'
        self.assertEqual(agent.default_idempotency_key(), "sdk-" + hashlib.sha256(canonical.encode()).hexdigest()[:40])

    def test_idempotency_key_changes_with_the_content(self) -> None:
        a = make_agent(self.kernel, endpoint="h:1")
        a.handle("x", lambda inv: b"")
        b = make_agent(self.kernel, endpoint="h:1")
        b.handle("x", lambda inv: b"")
        c = make_agent(self.kernel, endpoint="h:1", version="9")
        c.handle("x", lambda inv: b"")
        self.assertEqual(a.default_idempotency_key(), b.default_idempotency_key())
        self.assertNotEqual(a.default_idempotency_key(), c.default_idempotency_key())

    def test_retried_registration_reuses_the_key_and_leaves_one_agent(self) -> None:
        # The first two attempts reach the kernel and are recorded, but the answers are lost.
        reg = self.kernel.registry
        reg.fail["RegisterAgent"] = [
            (grpc.StatusCode.UNAVAILABLE, "after"),
            (grpc.StatusCode.DEADLINE_EXCEEDED, "after"),
        ]
        agent = make_agent(self.kernel)
        agent.handle("x", lambda inv: b"")
        self.start(agent)
        self.assertEqual(len(reg.register_calls), 3)
        self.assertEqual(len({r.idempotency_key for r in reg.register_calls}), 1)
        self.assertEqual(len(reg.agents), 1)
        self.assertIn(agent.agent_id, reg.agents)

    def test_permanent_registration_error_raises_at_once(self) -> None:
        self.kernel.registry.fail["RegisterAgent"] = [(grpc.StatusCode.PERMISSION_DENIED, "before")]
        agent = make_agent(self.kernel, register_timeout=10)
        agent.handle("x", lambda inv: b"")
        started = time.monotonic()
        with self.assertRaises(RegistrationError) as cm:
            agent.start()
        self.assertEqual(cm.exception.code, grpc.StatusCode.PERMISSION_DENIED)
        self.assertLess(time.monotonic() - started, 5)

    def test_unreachable_kernel_times_out_registration(self) -> None:
        self.kernel.stop()
        agent = make_agent(self.kernel, register_timeout=0.5, call_timeout=0.2)
        agent.handle("x", lambda inv: b"")
        with self.assertRaises(RegistrationError):
            agent.start()

    def test_heartbeats_follow_the_kernels_interval_and_report_load(self) -> None:
        reg = self.kernel.registry
        reg.next_heartbeat_ms = 50
        agent = make_agent(self.kernel, heartbeat_interval=10)
        agent.handle("x", lambda inv: b"ok")
        self.start(agent)
        call_agent(f"127.0.0.1:{agent.port}", "x")
        # The first beat answers 50 ms: later beats come at that pace, not the 10 s default.
        self.assertTrue(wait_for(lambda: len(reg.heartbeats) >= 4, timeout=3))
        self.assertTrue(all(h.id == agent.agent_id and h.tenant == "t1" for h in reg.heartbeats))
        self.assertTrue(any(h.load.latency_p50_ms > 0 for h in reg.heartbeats))

    def test_re_registers_when_the_kernel_forgets_the_agent(self) -> None:
        agent = make_agent(self.kernel)
        agent.handle("x", lambda inv: b"")
        registered, beats = [], []
        agent.on("registered", registered.append).on("heartbeat", beats.append)
        self.start(agent)
        first = agent.agent_id
        self.assertTrue(wait_for(lambda: len(beats) >= 1))
        self.kernel.registry.forget_all()
        self.assertTrue(wait_for(lambda: agent.agent_id not in (None, first), timeout=3))
        self.assertIn(agent.agent_id, self.kernel.registry.agents)
        self.assertEqual(len(self.kernel.registry.agents), 1)
        self.assertEqual(
            [(e["agent_id"], e["reregistered"]) for e in registered], [(first, False), (agent.agent_id, True)]
        )
        self.assertEqual(beats[0]["next_heartbeat_ms"], 100)
        with self.assertRaisesRegex(ConfigError, "unknown event"):
            agent.on("registerd", print)

    def test_keeps_serving_and_re_registers_across_a_kernel_restart(self) -> None:
        agent = make_agent(self.kernel)
        agent.handle("x", lambda inv: b"ok")
        self.start(agent)
        port = self.kernel.port
        self.kernel.stop()
        self.assertEqual(call_agent(f"127.0.0.1:{agent.port}", "x").payload, b"ok")
        restarted = FakeKernel(port=port)  # a kernel with an empty database on the same address
        self.addCleanup(restarted.stop)
        self.assertTrue(wait_for(lambda: agent.agent_id in restarted.registry.agents, timeout=10))

    def test_serves_unary_stream_and_async_handlers(self) -> None:
        agent = make_agent(self.kernel)
        agent.handle("bytes", lambda inv: inv.payload[::-1])
        agent.handle("json", lambda inv: {"n": len(inv.text())})
        agent.handle("reply", lambda inv: Reply(b"<b/>", "text/html"))

        @agent.handle("async")
        async def a(inv):
            await asyncio.sleep(0.01)
            return "async " + current_invocation().request_id

        @agent.handle_stream("chunks")
        def chunks(inv):
            for i in range(3):
                yield f"c{i}"

        @agent.handle_stream("achunks")
        async def achunks(inv):
            for i in range(2):
                await asyncio.sleep(0)
                yield {"i": i}

        self.start(agent)
        addr = f"127.0.0.1:{agent.port}"
        self.assertEqual(call_agent(addr, "bytes", b"abc").payload, b"cba")
        r = call_agent(addr, "json", b"hello")
        self.assertEqual((r.payload, r.content_type), (b'{"n":5}', "application/json"))
        self.assertEqual(call_agent(addr, "reply").content_type, "text/html")
        self.assertEqual(call_agent(addr, "async").payload, b"async r1")
        self.assertEqual([c.payload for c in call_agent(addr, "chunks", stream=True)], [b"c0", b"c1", b"c2"])
        self.assertEqual([c.payload for c in call_agent(addr, "achunks", stream=True)], [b'{"i":0}', b'{"i":1}'])

    def test_handler_errors_map_to_status_without_leaking(self) -> None:
        agent = make_agent(self.kernel)

        def bad(inv):
            if inv.payload == b"user":
                raise HandlerError("payload too short", grpc.StatusCode.FAILED_PRECONDITION)
            raise RuntimeError("database password is hunter2")

        agent.handle("bad", bad)
        self.start(agent)
        addr = f"127.0.0.1:{agent.port}"
        with self.assertRaises(grpc.RpcError) as cm:
            call_agent(addr, "bad", b"user")
        self.assertEqual(
            (cm.exception.code(), cm.exception.details()), (grpc.StatusCode.FAILED_PRECONDITION, "payload too short")
        )
        with self.assertRaises(grpc.RpcError) as cm:
            call_agent(addr, "bad", b"other")
        self.assertEqual(cm.exception.code(), grpc.StatusCode.INTERNAL)
        self.assertNotIn("hunter2", cm.exception.details())
        with self.assertRaises(grpc.RpcError) as cm:
            call_agent(addr, "unknown")
        self.assertEqual(cm.exception.code(), grpc.StatusCode.UNIMPLEMENTED)

    def test_invocation_carries_deadline_and_trace_context(self) -> None:
        seen = {}
        agent = make_agent(self.kernel)

        def h(inv):
            seen.update(remaining=inv.time_remaining(), deadline=inv.deadline, tp=inv.traceparent, ts=inv.tracestate)
            return b""

        agent.handle("x", h)
        self.start(agent)
        tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        call_agent(f"127.0.0.1:{agent.port}", "x", timeout=2.5, metadata=(("traceparent", tp), ("tracestate", "k=v")))
        self.assertTrue(1.5 < seen["remaining"] <= 2.6, seen)  # grpc-timeout is rounded up
        self.assertIsNotNone(seen["deadline"])
        self.assertEqual((seen["tp"], seen["ts"]), (tp, "k=v"))

    def test_drain_deregisters_first_finishes_in_flight_calls_and_refuses_new_ones(self) -> None:
        entered = threading.Event()
        release = threading.Event()
        agent = make_agent(self.kernel, drain_settle=0.05)

        def slow(inv):
            entered.set()
            release.wait(5)
            return b"done"

        agent.handle("slow", slow)
        agent.handle("fast", lambda inv: b"fast")
        agent.start()
        agent_id = agent.agent_id
        addr = f"127.0.0.1:{agent.port}"
        results = {}
        t = threading.Thread(target=lambda: results.update(r=call_agent(addr, "slow")))
        t.start()
        self.assertTrue(entered.wait(5))
        drained = []
        agent.on("drained", drained.append)
        stopper = threading.Thread(target=agent.drain, args=("test",))
        stopper.start()
        # The kernel forgets the agent while its call is still running ...
        self.assertTrue(wait_for(lambda: self.kernel.registry.deregistered == [agent_id], timeout=3))
        self.assertTrue(t.is_alive())

        def refused() -> bool:
            try:
                call_agent(addr, "fast", timeout=0.5)
                return False
            except grpc.RpcError:
                return True

        # ... then new calls are refused, and the one in flight still completes.
        self.assertTrue(wait_for(refused, timeout=3))
        release.set()
        t.join(5)
        stopper.join(10)
        self.assertEqual(results["r"].payload, b"done")
        self.assertEqual(self.kernel.registry.deregistered, [agent_id])
        self.assertEqual(agent.agent_id, None)
        self.assertEqual(drained, [{"deregistered": True, "cut_calls": 0}])

    def test_options_are_checked_and_name_the_field(self) -> None:
        with self.assertRaisesRegex(ConfigError, "name"):
            create_agent(name="bad name")
        nameless = make_agent(self.kernel, name="")
        nameless.handle("x", lambda inv: b"")
        with self.assertRaisesRegex(ConfigError, "name is required"):
            nameless.start()
        with self.assertRaisesRegex(ConfigError, "call_timeout"):
            create_agent(name="a", call_timeout=0)
        with self.assertRaisesRegex(ConfigError, "kernel_address"):
            create_agent(name="a", kernel_address="nohost")
        with self.assertRaisesRegex(ConfigError, "unknown option 'nmae'"):
            create_agent(name="a", nmae="b")
        with self.assertRaisesRegex(ConfigError, "api_key"):
            create_agent(name="a", api_key="secret")
        agent = create_agent(name="a")
        with self.assertRaisesRegex(ConfigError, "at least one handler"):
            agent.start()

    def test_environment_fills_defaults(self) -> None:
        from nops_agent import resolve_options

        o = resolve_options(
            name="a", env={"NOPS_KERNEL_ADDRESS": "k:1", "NOPS_TENANT": "t9", "SPIFFE_ENDPOINT_SOCKET": "unix:///s"}
        )
        self.assertEqual((o.kernel_address, o.tenant, o.workload_api_socket), ("k:1", "t9", "unix:///s"))
        key = "nops_0123456789abcdef01234567_" + "a" * 43
        o = resolve_options(name="a", env={"NOPS_API_KEY": key})
        self.assertEqual((o.api_key, o.kernel_address), (key, "localhost:8080"))
        o = resolve_options(name="a", env={"NOPS_KERNEL_URL": "https://k.example:8443"})
        self.assertEqual((o.kernel_address, o.identity), ("k.example:8443", "auto"))
        o = resolve_options(name="a", kernel_address="http://127.0.0.1:50051", env={})
        self.assertEqual((o.kernel_address, o.identity), ("127.0.0.1:50051", "none"))
        with self.assertRaisesRegex(ConfigError, "plaintext"):
            resolve_options(name="a", kernel_address="http://h:1", identity="files", env={})


class ApiKeyTest(unittest.TestCase):
    def test_rotation_swaps_the_key_for_new_calls_and_writes_the_file(self) -> None:
        keys = FakeApiKeys("0123456789abcdef01234567", "s" * 43)
        kernel = FakeKernel(api_keys=keys)
        self.addCleanup(kernel.stop)
        d = tempfile.mkdtemp()
        path = os.path.join(d, "key")
        with open(path, "w") as f:
            f.write(keys.current + "\n")
        agent = make_agent(kernel, api_key_file=path, api_key_grace_period=30, kernel_address=kernel.address)
        agent.handle("x", lambda inv: b"")
        agent.start()
        self.addCleanup(agent.stop, 0)
        old = agent.api_key
        self.assertEqual(kernel.registry.metadata[0]["x-api-key"], old)
        key_id = agent.rotate_api_key()
        self.assertEqual(key_id, "0123456789abcdef01234567")
        self.assertEqual(keys.rotations[0].grace_period.seconds, 30)
        self.assertEqual(keys.rotations[0].tenant, "t1")
        self.assertNotEqual(agent.api_key, old)
        self.assertEqual(agent.api_key, keys.current)
        with open(path) as f:
            self.assertEqual(f.read().strip(), keys.current)
        n = len(kernel.registry.metadata)
        self.assertTrue(wait_for(lambda: len(kernel.registry.metadata) > n + 1, timeout=3))
        self.assertTrue(all(keys.valid(m["x-api-key"]) for m in kernel.registry.metadata))
        self.assertEqual(kernel.registry.metadata[-1]["x-api-key"], keys.current)

    def test_automatic_rotation(self) -> None:
        keys = FakeApiKeys("0123456789abcdef01234567", "s" * 43)
        kernel = FakeKernel(api_keys=keys)
        self.addCleanup(kernel.stop)
        agent = make_agent(kernel, api_key=keys.current, api_key_rotation_interval=0.1)
        agent.handle("x", lambda inv: b"")
        agent.start()
        self.addCleanup(agent.stop, 0)
        self.assertTrue(wait_for(lambda: len(keys.rotations) >= 2, timeout=5))


if __name__ == "__main__":
    unittest.main()


class AsyncioTest(unittest.TestCase):
    def test_serve_runs_async_handlers_on_the_callers_loop_and_drains(self) -> None:
        kernel = FakeKernel()
        self.addCleanup(kernel.stop)
        agent = make_agent(kernel)
        loops = []

        @agent.handle("who")
        async def who(inv):
            loops.append(asyncio.get_running_loop())
            await asyncio.sleep(0.01)
            return "async"

        async def main():
            task = asyncio.create_task(agent.serve())
            while agent.agent_id is None:
                await asyncio.sleep(0.01)
            r = await asyncio.get_running_loop().run_in_executor(None, call_agent, f"127.0.0.1:{agent.port}", "who")
            self.assertEqual(r.payload, b"async")
            self.assertIs(loops[0], asyncio.get_running_loop())
            await agent.drain_async("test")
            await asyncio.wait_for(task, 10)

        asyncio.run(main())
        self.assertEqual(len(kernel.registry.deregistered), 1)
        self.assertEqual(kernel.registry.agents, {})
