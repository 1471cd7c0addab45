"""SVIDs: DER/PEM helpers, mTLS serving with caller checks, rotation without a restart, the Workload API."""

from __future__ import annotations

import calendar
import concurrent.futures
import os
import subprocess
import shutil
import tempfile
import threading
import unittest

import grpc
from cryptography import x509

from nops_agent import IdentityError, create_agent
from nops_agent._gen.spiffe.workload import workload_pb2, workload_pb2_grpc
from nops_agent.identity import FileIdentitySource, WorkloadApiIdentitySource, material_from_response, workload_target
from nops_agent.x509 import der_to_pem, pem_blocks, spiffe_id_of, split_der, tenant_of
from support import FakeKernel, TestCa, call_agent, wait_for

AGENT_ID = "spiffe://nops.local/nops/tenant/acme/agent/summarizer"
KERNEL_ID = "spiffe://nops.local/nops/kernel/edge-1"


class X509Test(unittest.TestCase):
    @classmethod
    def setUpClass(cls) -> None:
        cls.ca = TestCa()
        cls.files = cls.ca.issue(AGENT_ID, "agent")

    def test_spiffe_id_and_tenant_of_a_certificate(self) -> None:
        der = pem_blocks(TestCa.read(self.files["cert"]), "CERTIFICATE")[0]
        self.assertEqual(spiffe_id_of(der), AGENT_ID)
        self.assertEqual(tenant_of(AGENT_ID), "acme")
        self.assertIsNone(tenant_of("spiffe://nops.local/nops/admin/developer"))
        ca_der = pem_blocks(TestCa.read(self.ca.cert), "CERTIFICATE")[0]
        self.assertEqual(spiffe_id_of(ca_der), "spiffe://nops.local")

    def test_split_der_round_trips_concatenated_certificates(self) -> None:
        a = pem_blocks(TestCa.read(self.files["cert"]), "CERTIFICATE")[0]
        b = pem_blocks(TestCa.read(self.ca.cert), "CERTIFICATE")[0]
        self.assertEqual(split_der(a + b), [a, b])
        self.assertEqual(pem_blocks(der_to_pem("CERTIFICATE", [a, b]), "CERTIFICATE"), [a, b])
        with self.assertRaises(IdentityError):
            split_der(a[:-5])

    def test_workload_targets(self) -> None:
        self.assertEqual(workload_target("unix:///run/spire/agent.sock"), "unix:/run/spire/agent.sock")
        self.assertEqual(workload_target("tcp://127.0.0.1:8081"), "127.0.0.1:8081")
        with self.assertRaises(IdentityError):
            workload_target("http://x")


def kernel_credentials(ca: TestCa, kernel_files) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        TestCa.read(ca.cert), TestCa.read(kernel_files["key"]), TestCa.read(kernel_files["cert"])
    )


class MtlsServingTest(unittest.TestCase):
    def setUp(self) -> None:
        self.ca = TestCa()
        self.kernel_files = self.ca.issue(KERNEL_ID, "kernel")
        self.dir = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.install(self.ca.issue(AGENT_ID, "agent1"))
        self.kernel = FakeKernel(tls=self.kernel_files)
        self.addCleanup(self.kernel.stop)

    def install(self, files) -> None:
        # The dev issuer's layout: svid.pem, svid.key, bundle.pem (written key first, then certificate).
        shutil.copy(files["bundle"], os.path.join(self.dir, "bundle.pem.tmp"))
        os.replace(os.path.join(self.dir, "bundle.pem.tmp"), os.path.join(self.dir, "bundle.pem"))
        shutil.copy(files["key"], os.path.join(self.dir, "svid.key.tmp"))
        os.replace(os.path.join(self.dir, "svid.key.tmp"), os.path.join(self.dir, "svid.key"))
        shutil.copy(files["cert"], os.path.join(self.dir, "svid.pem.tmp"))
        os.replace(os.path.join(self.dir, "svid.pem.tmp"), os.path.join(self.dir, "svid.pem"))

    def agent(self, **kwargs):
        opts = dict(
            name="summarizer",
            identity="files",
            identity_dir=self.dir,
            kernel_address=self.kernel.address,
            kernel_ca_file="",
            svid_poll_interval=0.05,
            register_timeout=5,
            handle_signals=False,
            drain_timeout=1,
        )
        opts.update(kwargs)
        agent = create_agent(**opts)
        agent.handle("whoami", lambda inv: inv.tenant)
        agent.handle("caller", lambda inv: inv.caller_id)
        return agent

    def start(self, agent):
        agent.start()
        self.addCleanup(agent.stop, 0)
        return agent

    def test_tenant_and_name_come_from_the_svid(self) -> None:
        agent = self.start(self.agent(name=""))
        self.assertEqual(agent.options.name, "summarizer")
        self.assertEqual(self.kernel.registry.register_calls[0].name, "summarizer")
        self.assertEqual(agent.spiffe_id, AGENT_ID)
        self.assertEqual(agent.tenant, "acme")
        self.assertEqual(self.kernel.registry.register_calls[0].tenant, "acme")

    def test_kernel_with_a_kernel_svid_is_served_others_are_refused(self) -> None:
        agent = self.start(self.agent())
        addr = f"localhost:{agent.port}"
        r = call_agent(addr, "whoami", credentials=kernel_credentials(self.ca, self.kernel_files))
        self.assertEqual(r.payload, b"t1")
        r = call_agent(addr, "caller", credentials=kernel_credentials(self.ca, self.kernel_files))
        self.assertEqual(r.payload.decode(), KERNEL_ID)
        other = self.ca.issue("spiffe://nops.local/nops/tenant/acme/agent/other", "other")
        with self.assertRaises(grpc.RpcError) as cm:
            call_agent(addr, "whoami", credentials=kernel_credentials(self.ca, other))
        self.assertEqual(cm.exception.code(), grpc.StatusCode.PERMISSION_DENIED)
        # No client certificate: no handshake.
        with self.assertRaises(grpc.RpcError) as cm:
            call_agent(addr, "whoami", credentials=grpc.ssl_channel_credentials(TestCa.read(self.ca.cert)), timeout=2)
        self.assertIn(cm.exception.code(), (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED))

    def test_allowed_callers_can_name_ids(self) -> None:
        other_id = "spiffe://nops.local/nops/tenant/acme/agent/other"
        agent = self.start(self.agent(allowed_callers=[other_id]))
        other = self.ca.issue(other_id, "other")
        addr = f"localhost:{agent.port}"
        self.assertEqual(call_agent(addr, "whoami", credentials=kernel_credentials(self.ca, other)).payload, b"t1")
        with self.assertRaises(grpc.RpcError) as cm:
            call_agent(addr, "whoami", credentials=kernel_credentials(self.ca, self.kernel_files))
        self.assertEqual(cm.exception.code(), grpc.StatusCode.PERMISSION_DENIED)

    def test_rotated_svid_is_served_without_restarting_the_server(self) -> None:
        agent = self.start(self.agent())
        addr = f"localhost:{agent.port}"
        port = agent.port
        creds = kernel_credentials(self.ca, self.kernel_files)
        first = pem_blocks(TestCa.read(os.path.join(self.dir, "svid.pem")), "CERTIFICATE")[0]
        rotated = self.ca.issue(AGENT_ID, "agent2")
        self.install(rotated)
        new_der = pem_blocks(TestCa.read(rotated["cert"]), "CERTIFICATE")[0]
        self.assertNotEqual(first, new_der)
        self.assertTrue(wait_for(lambda: agent._identity.current().cert_chain_pem == TestCa.read(rotated["cert"])))
        # A new connection handshakes with the rotated certificate on the same port.
        import ssl

        ctx = ssl.create_default_context(cafile=self.ca.cert)
        ctx.load_cert_chain(self.kernel_files["cert"], self.kernel_files["key"])
        ctx.set_alpn_protocols(["h2"])
        import socket

        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
                served = tls.getpeercert(binary_form=True)
        self.assertEqual(served, new_der)
        self.assertEqual(agent.port, port)
        self.assertEqual(call_agent(addr, "whoami", credentials=creds).payload, b"t1")
        # The kernel channel follows too: heartbeats go on over a channel presenting the new SVID.
        new_pem = der_to_pem("CERTIFICATE", [new_der])
        peers = self.kernel.registry.heartbeat_peers
        self.assertTrue(wait_for(lambda: peers and peers[-1].replace(b"\r", b"") == new_pem, timeout=5))

    def test_missing_files_are_an_identity_error(self) -> None:
        with self.assertRaises(IdentityError):
            FileIdentitySource(
                os.path.join(self.dir, "nope.pem"),
                os.path.join(self.dir, "svid.key"),
                os.path.join(self.dir, "bundle.pem"),
            )


class FakeWorkloadApi(workload_pb2_grpc.SpiffeWorkloadAPIServicer):
    """Streams the current SVID and every later one; refuses calls without the SPIFFE header."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.responses = []
        self.refused = 0

    def push(self, resp) -> None:
        with self.cond:
            self.responses.append(resp)
            self.cond.notify_all()

    def FetchX509SVID(self, request, context):
        if ("workload.spiffe.io", "true") not in context.invocation_metadata():
            self.refused += 1
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "security header missing")
        sent = 0
        while context.is_active():
            with self.cond:
                self.cond.wait_for(lambda: len(self.responses) > sent, timeout=0.1)
                pending = self.responses[sent:]
            for resp in pending:
                sent += 1
                yield resp


def svid_response(files, spiffe_id: str) -> workload_pb2.X509SVIDResponse:
    chain = b"".join(pem_blocks(TestCa.read(files["cert"]), "CERTIFICATE"))
    key = pem_blocks(TestCa.read(files["key"]), "PRIVATE KEY")[0]
    bundle = b"".join(pem_blocks(TestCa.read(files["bundle"]), "CERTIFICATE"))
    return workload_pb2.X509SVIDResponse(
        svids=[workload_pb2.X509SVID(spiffe_id=spiffe_id, x509_svid=chain, x509_svid_key=key, bundle=bundle)]
    )


class WorkloadApiTest(unittest.TestCase):
    def test_streams_svids_over_a_unix_socket_and_follows_rotation(self) -> None:
        ca = TestCa()
        d = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, d, True)
        sock = os.path.join(d, "agent.sock")
        api = FakeWorkloadApi()
        server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=4))
        workload_pb2_grpc.add_SpiffeWorkloadAPIServicer_to_server(api, server)
        server.add_insecure_port(f"unix:{sock}")
        server.start()
        self.addCleanup(lambda: server.stop(0))
        first = ca.issue(AGENT_ID, "w1")
        api.push(svid_response(first, AGENT_ID))
        source = WorkloadApiIdentitySource(f"unix://{sock}")
        self.addCleanup(source.close)
        m = source.wait_ready(5)
        self.assertEqual(m.spiffe_id, AGENT_ID)
        self.assertEqual(
            m.cert_chain_pem, der_to_pem("CERTIFICATE", pem_blocks(TestCa.read(first["cert"]), "CERTIFICATE"))
        )
        self.assertEqual(api.refused, 0)
        updates = []
        source.on_update(updates.append)
        second = ca.issue(AGENT_ID, "w2")
        api.push(svid_response(second, AGENT_ID))
        self.assertTrue(wait_for(lambda: len(updates) == 1, timeout=5))
        self.assertEqual(
            updates[0].private_key_pem, der_to_pem("PRIVATE KEY", pem_blocks(TestCa.read(second["key"]), "PRIVATE KEY"))
        )

    def test_chooses_the_requested_spiffe_id(self) -> None:
        ca = TestCa()
        a = svid_response(ca.issue(AGENT_ID, "a"), AGENT_ID)
        other = "spiffe://nops.local/nops/tenant/acme/agent/b"
        b = svid_response(ca.issue(other, "b"), other)
        both = workload_pb2.X509SVIDResponse(svids=[a.svids[0], b.svids[0]])
        self.assertEqual(material_from_response(both).spiffe_id, AGENT_ID)
        self.assertEqual(material_from_response(both, other).spiffe_id, other)
        with self.assertRaises(IdentityError):
            material_from_response(both, "spiffe://nops.local/nope")


if __name__ == "__main__":
    unittest.main()


class DevIssuerTest(unittest.TestCase):
    def setUp(self) -> None:
        try:
            import cryptography  # noqa: F401
        except ImportError:
            self.skipTest("python3-cryptography is not installed (dev identity needs it)")
        self.ca = TestCa()
        self.kernel_files = self.ca.issue(KERNEL_ID, "kernel")

    def test_mints_an_agent_svid_from_the_dev_ca_and_renews_it_at_half_life(self) -> None:
        from nops_agent.identity import DevIssuerIdentitySource

        source = DevIssuerIdentitySource(self.ca.dir, "acme", "summarizer", ttl=1.0)
        self.addCleanup(source.close)
        m = source.current()
        self.assertEqual(m.spiffe_id, AGENT_ID)
        self.assertEqual(spiffe_id_of(pem_blocks(m.cert_chain_pem, "CERTIFICATE")[0]), AGENT_ID)
        # Verified at the moment the whole chain became valid: with a 1 s lifetime, "now" may already be
        # past the SVID on a loaded machine, which says nothing about the chain.
        with open(self.ca.cert, "rb") as ca_pem:
            chain = [x509.load_pem_x509_certificate(m.cert_chain_pem), x509.load_pem_x509_certificate(ca_pem.read())]
        valid_from = max(calendar.timegm(c.not_valid_before.timetuple()) for c in chain)
        with tempfile.NamedTemporaryFile(suffix=".pem") as f:
            f.write(m.cert_chain_pem)
            f.flush()
            verified = subprocess.run(
                ["openssl", "verify", "-attime", str(valid_from), "-CAfile", self.ca.cert, "-purpose", "sslserver", f.name],
                capture_output=True,
            )
        self.assertEqual(verified.returncode, 0, verified.stderr)
        updates = []
        source.on_update(updates.append)
        self.assertTrue(wait_for(lambda: len(updates) >= 1, timeout=5))
        self.assertNotEqual(updates[0].cert_chain_pem, m.cert_chain_pem)

    def test_an_agent_with_a_dev_identity_serves_and_calls_the_kernel_as_itself(self) -> None:
        kernel = FakeKernel(tls=self.kernel_files)
        self.addCleanup(kernel.stop)
        agent = create_agent(
            name="summarizer",
            tenant="acme",
            identity_dir=self.ca.dir,
            kernel_address=kernel.address,
            register_timeout=5,
            handle_signals=False,
            drain_timeout=1,
        )
        agent.handle("caller", lambda inv: inv.caller_id)
        agent.start()
        self.addCleanup(agent.stop, 0)
        self.assertEqual(agent.spiffe_id, AGENT_ID)
        r = call_agent(f"localhost:{agent.port}", "caller", credentials=kernel_credentials(self.ca, self.kernel_files))
        self.assertEqual(r.payload.decode(), KERNEL_ID)
        peers = kernel.registry.heartbeat_peers
        self.assertTrue(wait_for(lambda: bool(peers), timeout=5))
        leaf = pem_blocks(peers[-1], "CERTIFICATE")[0]
        self.assertEqual(spiffe_id_of(leaf), AGENT_ID)
