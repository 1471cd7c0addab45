"""Test doubles: an in-memory kernel (registry + API keys) served by grpcio, and SVIDs made with openssl."""

from __future__ import annotations

import concurrent.futures
import os
import subprocess
import tempfile
import threading
import time
import uuid
from typing import Dict, List, Optional

import grpc

from nops_agent._gen.nops.agent.v1 import agent_pb2, agent_pb2_grpc
from nops_agent._gen.nops.kernel.v1 import (
    agent_registry_pb2 as reg,
    agent_registry_pb2_grpc as reg_grpc,
    api_key_pb2,
    api_key_pb2_grpc,
    event_bus_pb2,
    event_bus_pb2_grpc,
    routing_pb2,
    routing_pb2_grpc,
)
from nops_agent._gen.nops.events.v1 import envelope_pb2


class FakeEventBus(event_bus_pb2_grpc.EventBusServiceServicer):
    """Publish with idempotency keys; Subscribe delivers what was published and redelivers NAKs;
    ``break_next_stream`` ends a Subscribe stream once with UNAVAILABLE."""

    def __init__(self) -> None:
        self.lock = threading.Condition()
        self.published: List[event_bus_pb2.PublishRequest] = []
        self.by_key: Dict[str, int] = {}
        self.queue: List[tuple] = []  # (seq, deliveries)
        self.acks: List[tuple] = []
        self.fail_publish: List[grpc.StatusCode] = []
        self.break_next_stream = False
        self.subscribes = 0

    def Publish(self, request, context):
        with self.lock:
            seq = self.by_key.get(request.idempotency_key)
            duplicate = seq is not None
            if not duplicate:
                self.published.append(request)
                seq = len(self.published)
                self.by_key[request.idempotency_key] = seq
                self.queue.append((seq, 1))
                self.lock.notify_all()
            fail = self.fail_publish.pop(0) if self.fail_publish else None
        if fail is not None:
            context.abort(fail, "injected after the write")
        return event_bus_pb2.PublishResponse(
            event_id=f"e{seq}", outbox_id=seq, subject=request.subject, duplicate=duplicate
        )

    def Subscribe(self, request, context):
        with self.lock:
            self.subscribes += 1
            broken = self.break_next_stream
            self.break_next_stream = False
        if broken:
            context.abort(grpc.StatusCode.UNAVAILABLE, "leaf down")
        while context.is_active():
            with self.lock:
                self.lock.wait_for(lambda: bool(self.queue), timeout=0.1)
                if not self.queue:
                    continue
                seq, deliveries = self.queue.pop(0)
                req = self.published[seq - 1]
            env = envelope_pb2.EventEnvelope(id=f"e{seq}", type=req.subject, tenant=req.tenant, payload=req.payload)
            yield event_bus_pb2.SubscribeResponse(
                message=event_bus_pb2.DeliveredMessage(
                    subject=req.subject,
                    envelope=env.SerializeToString(),
                    delivery_count=deliveries,
                    ack_token=f"{seq}:{deliveries}",
                    event_id=f"e{seq}",
                )
            )

    def Ack(self, request, context):
        with self.lock:
            self.acks.append((request.ack_token, request.action))
            if request.action == event_bus_pb2.ACK_ACTION_NAK:
                seq, deliveries = (int(x) for x in request.ack_token.split(":"))
                self.queue.append((seq, deliveries + 1))
                self.lock.notify_all()
        return event_bus_pb2.AckResponse()


class FakeRouting(routing_pb2_grpc.RoutingServiceServicer):
    """Invoke answers the payload back and records each call's metadata and deadline."""

    def __init__(self) -> None:
        self.calls: List[Dict[str, object]] = []

    def Invoke(self, request, context):
        self.calls.append({"metadata": dict(context.invocation_metadata()), "remaining": context.time_remaining()})
        return routing_pb2.InvokeResponse(
            payload=request.payload, content_type=request.content_type, agent_id="a1", attempts=1
        )


class FakeRegistry(reg_grpc.AgentRegistryServiceServicer):
    """RegisterAgent with idempotency keys, Heartbeat, DeregisterAgent; failures can be injected."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.agents: Dict[str, reg.RegisterAgentRequest] = {}
        self.keys: Dict[str, str] = {}
        self.register_calls: List[reg.RegisterAgentRequest] = []
        self.heartbeats: List[reg.HeartbeatRequest] = []
        self.heartbeat_peers: List[bytes] = []
        self.deregistered: List[str] = []
        self.metadata: List[Dict[str, str]] = []
        # Each entry fails one call of that method with the code (after doing the work when "after").
        self.fail: Dict[str, List[tuple]] = {"RegisterAgent": [], "Heartbeat": []}
        self.next_heartbeat_ms = 100
        self.heartbeat_seen = threading.Event()

    def _inject(self, method: str, context: grpc.ServicerContext, phase: str) -> None:
        with self.lock:
            queue = self.fail[method]
            if queue and queue[0][1] == phase:
                code, _ = queue.pop(0)
            else:
                return
        context.abort(code, "injected")

    def RegisterAgent(self, request, context):
        self.metadata.append({k: v for k, v in context.invocation_metadata()})
        self._inject("RegisterAgent", context, "before")
        with self.lock:
            self.register_calls.append(request)
            agent_id = self.keys.get(request.idempotency_key) if request.idempotency_key else None
            replayed = agent_id is not None and agent_id in self.agents
            if not replayed:
                agent_id = str(uuid.uuid4())
                self.agents[agent_id] = request
                if request.idempotency_key:
                    self.keys[request.idempotency_key] = agent_id
        self._inject("RegisterAgent", context, "after")
        return reg.RegisterAgentResponse(
            agent=reg.Agent(id=agent_id, tenant=request.tenant, name=request.name, endpoint=request.endpoint),
            replayed=replayed,
        )

    def Heartbeat(self, request, context):
        self.metadata.append({k: v for k, v in context.invocation_metadata()})
        self._inject("Heartbeat", context, "before")
        with self.lock:
            self.heartbeats.append(request)
            self.heartbeat_peers.append(b"".join((context.auth_context() or {}).get("x509_pem_cert", [])))
            known = request.id in self.agents
        self.heartbeat_seen.set()
        if not known:
            context.abort(grpc.StatusCode.NOT_FOUND, f"agent {request.id} not found")
        return reg.HeartbeatResponse(status=reg.AGENT_STATUS_HEALTHY, next_heartbeat_ms=self.next_heartbeat_ms)

    def DeregisterAgent(self, request, context):
        with self.lock:
            self.deregistered.append(request.id)
            self.agents.pop(request.id, None)
            self.keys = {k: v for k, v in self.keys.items() if v != request.id}
        return reg.DeregisterAgentResponse()

    def forget_all(self) -> None:
        """What a kernel with a new database knows: nothing."""
        with self.lock:
            self.agents.clear()
            self.keys.clear()


class FakeApiKeys(api_key_pb2_grpc.ApiKeyServiceServicer):
    """RotateApiKey with a grace period; ``valid()`` says whether a presented key works now."""

    def __init__(self, key_id: str, secret: str) -> None:
        self.key_id = key_id
        self.current = f"nops_{key_id}_{secret}"
        self.previous: Optional[str] = None
        self.grace_until = 0.0
        self.rotations: List[api_key_pb2.RotateApiKeyRequest] = []

    def valid(self, key: str) -> bool:
        return key == self.current or (key == self.previous and time.time() < self.grace_until)

    def RotateApiKey(self, request, context):
        self.rotations.append(request)
        self.previous = self.current
        self.grace_until = time.time() + request.grace_period.ToNanoseconds() / 1e9
        self.current = f"nops_{self.key_id}_{uuid.uuid4().hex}{uuid.uuid4().hex[:11]}"
        return api_key_pb2.RotateApiKeyResponse(
            api_key=api_key_pb2.ApiKey(key_id=self.key_id, tenant=request.tenant), secret=self.current
        )


class FakeKernel:
    """A grpcio server with the fake services on a free loopback port."""

    def __init__(
        self, api_keys: Optional[FakeApiKeys] = None, port: int = 0, tls: Optional[Dict[str, str]] = None
    ) -> None:
        self.registry = FakeRegistry()
        self.routing = FakeRouting()
        self.events = FakeEventBus()
        self.api_keys = api_keys
        self.server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=8))
        reg_grpc.add_AgentRegistryServiceServicer_to_server(self.registry, self.server)
        routing_pb2_grpc.add_RoutingServiceServicer_to_server(self.routing, self.server)
        event_bus_pb2_grpc.add_EventBusServiceServicer_to_server(self.events, self.server)
        if api_keys is not None:
            api_key_pb2_grpc.add_ApiKeyServiceServicer_to_server(api_keys, self.server)
        if tls:
            creds = grpc.ssl_server_credentials(
                [(TestCa.read(tls["key"]), TestCa.read(tls["cert"]))],
                root_certificates=TestCa.read(tls["bundle"]),
                require_client_auth=True,
            )
            self.port = self.server.add_secure_port(f"127.0.0.1:{port}", creds)
        else:
            self.port = self.server.add_insecure_port(f"127.0.0.1:{port}")
        self.host = "localhost" if tls else "127.0.0.1"
        self.server.start()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def stop(self) -> None:
        self.server.stop(0).wait()


def call_agent(
    address: str,
    capability: str,
    payload: bytes = b"",
    timeout: float = 5.0,
    metadata=(),
    credentials: Optional[grpc.ChannelCredentials] = None,
    stream: bool = False,
    server_name: str = "",
):
    """Calls an agent's AgentService the way the kernel does."""
    options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
    channel = (
        grpc.secure_channel(address, credentials, options=options) if credentials else grpc.insecure_channel(address)
    )
    inv = agent_pb2.Invocation(capability=capability, tenant="t1", payload=payload, request_id="r1", attempt=1)
    stub = agent_pb2_grpc.AgentServiceStub(channel)
    try:
        if stream:
            return [
                c
                for c in stub.HandleStream(
                    agent_pb2.HandleStreamRequest(invocation=inv), timeout=timeout, metadata=metadata
                )
            ]
        return stub.Handle(agent_pb2.HandleRequest(invocation=inv), timeout=timeout, metadata=metadata)
    finally:
        channel.close()


def wait_for(predicate, timeout: float = 5.0, interval: float = 0.01) -> bool:
    """Polls ``predicate`` until it is true or ``timeout`` passes; returns its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


class TestCa:
    """A CA and SVIDs for it, made with the openssl command line (ECDSA P-256, URI SANs)."""

    def __init__(self, trust_domain: str = "nops.local") -> None:
        self.trust_domain = trust_domain
        self.dir = tempfile.mkdtemp(prefix="nops-py-ca-")
        self.key = os.path.join(self.dir, "ca.key")
        self.cert = os.path.join(self.dir, "ca.pem")
        self._openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", self.key)
        self._openssl(
            "req",
            "-x509",
            "-new",
            "-key",
            self.key,
            "-out",
            self.cert,
            "-days",
            "2",
            "-subj",
            "/O=test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-addext",
            f"subjectAltName=URI:spiffe://{trust_domain}",
        )

    def _openssl(self, *args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    def issue(self, spiffe_id: str, name: str, dns: str = "localhost") -> Dict[str, str]:
        """Writes <name>.pem / <name>.key (PKCS#8) and returns their paths and the bundle's."""
        key = os.path.join(self.dir, f"{name}.key")
        raw = os.path.join(self.dir, f"{name}.raw.key")
        csr = os.path.join(self.dir, f"{name}.csr")
        cert = os.path.join(self.dir, f"{name}.pem")
        ext = os.path.join(self.dir, f"{name}.ext")
        self._openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", raw)
        self._openssl("pkcs8", "-topk8", "-nocrypt", "-in", raw, "-out", key)
        self._openssl("req", "-new", "-key", key, "-out", csr, "-subj", "/O=test")
        with open(ext, "w") as f:
            f.write(
                "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                "extendedKeyUsage=serverAuth,clientAuth\n"
                f"subjectAltName=URI:{spiffe_id},DNS:{dns},IP:127.0.0.1\n"
            )
        self._openssl(
            "x509",
            "-req",
            "-in",
            csr,
            "-CA",
            self.cert,
            "-CAkey",
            self.key,
            "-CAcreateserial",
            "-out",
            cert,
            "-days",
            "1",
            "-extfile",
            ext,
        )
        return {"cert": cert, "key": key, "bundle": self.cert}

    @staticmethod
    def read(path: str) -> bytes:
        with open(path, "rb") as f:
            return f.read()
