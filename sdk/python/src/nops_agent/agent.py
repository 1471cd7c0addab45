"""The agent: serves AgentService, registers idempotently, heartbeats, drains on SIGTERM."""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import inspect
import json
import logging
import os
import re
import signal
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Union

import grpc

from ._gen.nops.agent.v1 import agent_pb2, agent_pb2_grpc
from ._gen.nops.events.v1 import envelope_pb2
from ._gen.nops.kernel.v1 import agent_registry_pb2, event_bus_pb2, routing_pb2
from .errors import (
    AgentStoppedError,
    ConfigError,
    HandlerError,
    KernelError,
    KernelUnavailableError,
    NopsError,
    RegistrationError,
)
from .identity import DevIssuerIdentitySource, FileIdentitySource, IdentitySource, WorkloadApiIdentitySource
from .invocation import Invocation, Reply, _current, encode_result, invocation_from
from .kernel_client import ApiKeyHolder, KernelClient
from .load import LoadTracker
from .options import AgentOptions, resolve_options
from .telemetry import Telemetry, metadata_carrier
from .x509 import agent_name_of, pem_blocks, spiffe_id_of, tenant_of, trust_domain_of

__all__ = ["Agent", "create_agent", "Event", "EVENTS", "PublishResult", "InvokeResult", "Subscription"]

log = logging.getLogger("nops_agent")

Handler = Callable[[Invocation], Any]

#: Default deadline of invoke() and invoke_stream() outside a handler, seconds (the TypeScript SDK's).
INVOKE_TIMEOUT = 30.0
#: Default deadline of a publish() attempt outside a handler, seconds (the TypeScript SDK's).
PUBLISH_TIMEOUT = 10.0

_TENANT = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")

_PERMANENT_REGISTRATION = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.FAILED_PRECONDITION,
    }
)


@dataclass
class _Capability:
    name: str
    version: str
    attributes: Dict[str, str]
    handler: Handler
    stream: bool


@dataclass
class PublishResult:
    """Where the kernel recorded a published event."""

    #: The event's id.
    event_id: str
    #: Outbox sequence at the edge.
    outbox_id: int
    #: Full NATS subject.
    subject: str
    #: True when an earlier Publish with the same idempotency key answered this one.
    duplicate: bool


@dataclass
class InvokeResult:
    """The answer of another agent, invoked through the kernel."""

    #: Response body.
    payload: bytes
    #: Media type of ``payload``.
    content_type: str
    #: The agent that answered.
    agent_id: str
    #: Attempts the kernel made (retries and hedges count).
    attempts: int

    def json(self) -> Any:
        """The payload parsed as JSON."""
        return json.loads(self.payload or b"null")


@dataclass
class Event:
    """One delivered event of a subscription."""

    #: Subject within the tenant's namespace.
    subject: str
    #: The event's id (stable across redeliveries: dedupe on it).
    event_id: str
    #: Event type (the envelope's ``type``).
    type: str
    #: Event body.
    payload: bytes
    #: Protobuf name of ``payload`` when it is a protobuf message.
    payload_type: str
    #: NATS headers of the message.
    headers: Dict[str, str]
    #: 1 on first delivery, then counts redeliveries.
    delivery_count: int
    #: The whole envelope.
    envelope: Any

    def json(self) -> Any:
        """The payload parsed as JSON."""
        return json.loads(self.payload or b"null")


class Subscription:
    """A running subscription; ``close()`` ends it."""

    def __init__(self, consumer: str) -> None:
        self.consumer = consumer
        self._stop = threading.Event()
        self._call: Any = None
        self._thread: Optional[threading.Thread] = None

    def close(self, timeout: float = 5.0) -> None:
        """Stops receiving; the handler call under way finishes first."""
        self._stop.set()
        call = self._call
        if call is not None:
            call.cancel()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)


def _caller_ids(context: grpc.ServicerContext) -> List[str]:
    auth = context.auth_context() or {}
    ids = [v.decode() for v in auth.get("peer_spiffe_id", [])]
    if not ids:
        ids = [v.decode() for v in auth.get("x509_uri", []) if v.startswith(b"spiffe://")]
    if not ids:
        for pem in auth.get("x509_pem_cert", []):
            for der in pem_blocks(pem, "CERTIFICATE")[:1]:
                sid = spiffe_id_of(der)
                if sid:
                    ids.append(sid)
    return ids


def _caller_allowed(ids: List[str], patterns: List[str]) -> bool:
    for sid in ids:
        for pattern in patterns:
            if pattern.endswith("/*") and sid.startswith(pattern[:-1]):
                return True
            if sid == pattern:
                return True
    return False


#: What ``Agent.on`` can listen to, and what each listener receives (the TypeScript SDK's events).
EVENTS = {
    "registered": "{'agent_id', 'replayed', 'reregistered'} after each successful RegisterAgent",
    "heartbeat": "{'status', 'next_heartbeat_ms'} after each answered heartbeat",
    "kernel_unavailable": "the KernelUnavailableError of a failed registration or heartbeat",
    "api_key_rotated": "{'key_id', 'key'} after each rotation (persist 'key' if there is no api_key_file)",
    "draining": "{'reason'} when a drain starts",
    "drained": "{'deregistered', 'cut_calls'} when the drain is over",
    "warning": "a NopsError the agent recovered from (refused registration, failed heartbeat or rotation)",
}


class _Servicer(agent_pb2_grpc.AgentServiceServicer):
    def __init__(self, agent: "Agent") -> None:
        self._agent = agent

    def Handle(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._agent._serve(request.invocation, context, stream=False)

    def HandleStream(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        return self._agent._serve(request.invocation, context, stream=True)


class Agent:
    """An agent of the NOPS kernel. Make one with :func:`create_agent`, add handlers, then
    ``run()`` (blocking, drains on SIGTERM), ``start()``/``stop()``, or ``await serve()``.
    """

    def __init__(self, options: AgentOptions) -> None:
        self.options = options
        self._capabilities: Dict[str, _Capability] = {}
        self._telemetry = Telemetry(options.name, options.tracer_provider, options.meter_provider)
        self._load = LoadTracker()
        self._lock = threading.Lock()
        self._state = "new"
        self._agent_id: Optional[str] = None
        self._registered = threading.Event()
        self._first_error: Optional[BaseException] = None
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self._lifecycle: Optional[threading.Thread] = None
        self._server: Optional[grpc.Server] = None
        self._identity: Optional[IdentitySource] = None
        self._api_key: Optional[ApiKeyHolder] = None
        self._client: Optional[KernelClient] = None
        self._subscriptions: List[Subscription] = []
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._own_loop: Optional[threading.Thread] = None
        self._heartbeat_interval = options.heartbeat_interval
        self._next_rotation = 0.0
        self._stop_reason = "stop"
        self._listeners: Dict[str, List[Callable[[Any], None]]] = {e: [] for e in EVENTS}
        self._ever_registered = False
        self.port = 0
        self.endpoint = ""
        self.tenant = options.tenant
        self.spiffe_id = ""

    # ---- handlers -------------------------------------------------------------------------

    def handle(
        self,
        capability: str,
        handler: Optional[Handler] = None,
        *,
        version: str = "1.0.0",
        attributes: Optional[Mapping[str, str]] = None,
    ) -> Any:
        """Serves ``capability`` with ``handler(invocation)`` (a function or ``async def``).

        The handler returns bytes, str, JSON-able data or a :class:`Reply`; raising
        :class:`HandlerError` answers with its status. Usable as a decorator.
        """
        return self._add(capability, handler, version, attributes, stream=False)

    def handle_stream(
        self,
        capability: str,
        handler: Optional[Handler] = None,
        *,
        version: str = "1.0.0",
        attributes: Optional[Mapping[str, str]] = None,
    ) -> Any:
        """Serves ``capability`` with a generator (or async generator) yielding chunks; each chunk is
        bytes, str, JSON-able data or a :class:`Reply`. Usable as a decorator."""
        return self._add(capability, handler, version, attributes, stream=True)

    def _add(self, capability: str, handler: Optional[Handler], version: str, attributes: Any, stream: bool) -> Any:
        def register(fn: Handler) -> Handler:
            if not callable(fn):
                raise ConfigError(f"handler of {capability!r} is not callable")
            if not capability or len(capability) > 100:
                raise ConfigError(f"capability name {capability!r} must be 1..100 characters")
            with self._lock:
                if self._state != "new":
                    raise ConfigError("add handlers before the agent starts")
                if capability in self._capabilities:
                    raise ConfigError(f"capability {capability!r} has a handler already")
                self._capabilities[capability] = _Capability(capability, version, dict(attributes or {}), fn, stream)
            return fn

        return register if handler is None else register(handler)

    # ---- events ---------------------------------------------------------------------------

    def on(self, event: str, listener: Callable[[Any], None]) -> "Agent":
        """Calls ``listener(payload)`` on each ``event`` (see EVENTS); listeners run on the SDK's
        threads and must not block."""
        if event not in self._listeners:
            raise ConfigError(f"unknown event {event!r} (one of {', '.join(EVENTS)})")
        self._listeners[event].append(listener)
        return self

    def off(self, event: str, listener: Callable[[Any], None]) -> "Agent":
        """Removes a listener added with ``on``."""
        if listener in self._listeners.get(event, []):
            self._listeners[event].remove(listener)
        return self

    def _emit(self, event: str, payload: Any) -> None:
        for listener in list(self._listeners[event]):
            try:
                listener(payload)
            except Exception:  # a listener's bug must not stop the agent
                log.exception("listener of %s failed", event)

    # ---- lifecycle ------------------------------------------------------------------------

    @property
    def agent_id(self) -> Optional[str]:
        """The id the kernel gave this agent (None while unregistered)."""
        return self._agent_id

    @property
    def in_flight(self) -> int:
        """Calls being served now."""
        return self._load.in_flight

    def start(self) -> "Agent":
        """Starts serving and registers; returns once registered (raises after ``register_timeout``)."""
        with self._lock:
            if self._state != "new":
                raise AgentStoppedError(f"agent already {self._state}")
            if not self._capabilities:
                raise ConfigError("add at least one handler before starting the agent")
            self._state = "starting"
        try:
            self._start_identity()
            self._start_server()
            self._client = KernelClient(
                self.options.kernel_address,
                self._identity,
                self._api_key,
                self._kernel_ca(),
                self.options.kernel_server_name,
                self.options.max_message_bytes,
                self._telemetry,
            )
            if self.options.api_key_rotation_interval > 0:
                self._next_rotation = time.monotonic() + self.options.api_key_rotation_interval
            self._lifecycle = threading.Thread(target=self._run_lifecycle, name="nops-lifecycle", daemon=True)
            self._lifecycle.start()
            if not self._registered.wait(self.options.register_timeout) or self._agent_id is None:
                err = self._first_error
                if isinstance(err, RegistrationError):
                    raise err
                raise RegistrationError(
                    "RegisterAgent",
                    err.code if isinstance(err, KernelError) else grpc.StatusCode.DEADLINE_EXCEEDED,
                    f"not registered within {self.options.register_timeout:g} s"
                    + (f" (last error: {err})" if err else ""),
                ) from err
        except BaseException:
            self._shutdown(None, grace=0)
            raise
        with self._lock:
            self._state = "running"
        log.info("agent %s registered as %s, serving %s", self.options.name, self._agent_id, self.endpoint)
        return self

    def drain(self, reason: str = "drain", grace: Optional[float] = None) -> None:
        """Leaves gracefully: deregisters (the kernel stops routing here), keeps serving for
        ``drain_settle`` seconds for calls dispatched just before, then refuses new calls and lets
        the ones in flight finish (up to ``grace``, default ``drain_timeout`` seconds) before closing.
        ``reason`` goes to the kernel's audit trail. Safe to call more than once."""
        with self._lock:
            if self._state in ("stopping", "stopped"):
                state = self._state
            else:
                state = None
                self._state = "stopping"
        if state is not None:
            self._stopped.wait()
            return
        self._shutdown(reason, grace=self.options.drain_timeout if grace is None else grace)

    def stop(self, grace: Optional[float] = None) -> None:
        """Same as ``drain()``."""
        self.drain("stop", grace)

    def run(self) -> None:
        """Starts the agent and blocks until SIGTERM or SIGINT (when ``handle_signals``) or ``stop()``,
        then drains and deregisters. An agent already started is just waited on."""
        if self._state == "new":
            self.start()
        previous: Dict[int, Any] = {}
        if self.options.handle_signals and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                previous[sig] = signal.signal(
                    sig, lambda signum, _f: self._stopping_requested(signal.Signals(signum).name)
                )
        try:
            while not self._stopping.is_set():
                self._stopping.wait(0.5)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            log.info("%s: draining", self._stop_reason)
            self.drain(self._stop_reason)

    def _stopping_requested(self, reason: str = "signal") -> None:
        # Runs in a signal handler: no logging here (its lock may be held by the interrupted code).
        self._stop_reason = reason
        self._stopping.set()
        self._wake.set()

    def __enter__(self) -> "Agent":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ---- asyncio --------------------------------------------------------------------------

    async def start_async(self) -> "Agent":
        """``start()`` for asyncio: ``async def`` handlers then run on this event loop."""
        self._loop = asyncio.get_running_loop()
        await asyncio.get_running_loop().run_in_executor(None, self.start)
        return self

    async def stop_async(self, grace: Optional[float] = None) -> None:
        """``stop()`` for asyncio."""
        await asyncio.get_running_loop().run_in_executor(None, self.stop, grace)

    async def drain_async(self, reason: str = "drain", grace: Optional[float] = None) -> None:
        """``drain()`` for asyncio."""
        await asyncio.get_running_loop().run_in_executor(None, self.drain, reason, grace)

    async def serve(self) -> None:
        """Starts, then waits until SIGTERM/SIGINT (when ``handle_signals``) or ``stop()``; drains."""
        await self.start_async()
        loop = asyncio.get_running_loop()
        installed = []
        if self.options.handle_signals and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                try:
                    loop.add_signal_handler(sig, self._stopping_requested, sig.name)
                    installed.append(sig)
                except (NotImplementedError, RuntimeError):
                    pass
        try:
            while not self._stopping.is_set():
                await asyncio.sleep(0.2)
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)
            await self.drain_async(self._stop_reason)

    async def __aenter__(self) -> "Agent":
        return await self.start_async()

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop_async()

    # ---- startup pieces -------------------------------------------------------------------

    def _start_identity(self) -> None:
        o = self.options
        mode = o.identity
        if mode == "auto":
            if o.workload_api_socket:
                mode = "workload-api"
            elif o.name and _can_mint(o.identity_dir):
                mode = "dev"
            elif all(os.path.exists(f) for f in (o.svid_file, o.svid_key_file, o.bundle_file)):
                mode = "files"
            else:
                mode = "none"
        if mode == "dev":
            if not o.name:
                raise ConfigError("name is required for a dev identity (it is part of the minted SPIFFE ID)")
            self._identity = DevIssuerIdentitySource(o.identity_dir, self.tenant or "default", o.name, o.dev_svid_ttl)
        elif mode == "workload-api":
            if not o.workload_api_socket:
                raise ConfigError("identity is workload-api but no workload_api_socket (or SPIFFE_ENDPOINT_SOCKET)")
            self._identity = WorkloadApiIdentitySource(o.workload_api_socket, o.spiffe_id)
        elif mode == "files":
            self._identity = FileIdentitySource(o.svid_file, o.svid_key_file, o.bundle_file, o.svid_poll_interval)
        if self._identity is not None:
            material = self._identity.wait_ready(o.register_timeout)
            self.spiffe_id = material.spiffe_id
        if o.api_key:
            self._api_key = ApiKeyHolder(o.api_key, o.api_key_file)
        if not self.tenant:
            self.tenant = tenant_of(self.spiffe_id) or "default"
        if not _TENANT.match(self.tenant):
            raise ConfigError(f"tenant must match {_TENANT.pattern} (got {self.tenant!r})")
        if not o.name:
            o.name = agent_name_of(self.spiffe_id) or ""
            if not o.name:
                raise ConfigError("name is required: the SVID names no agent (.../nops/tenant/<t>/agent/<name>)")
            self._telemetry.rename(o.name)
        log.info(
            "identity: %s%s; calls authenticate with %s",
            mode,
            f" ({self.spiffe_id})" if self.spiffe_id else "",
            "an API key" if self._api_key else ("the SVID" if self._identity else "nothing (plaintext)"),
        )

    def _kernel_ca(self) -> Optional[bytes]:
        o = self.options
        for path in (o.kernel_ca_file, o.bundle_file if self._identity is None else ""):
            if path and os.path.exists(path):
                with open(path, "rb") as f:
                    return f.read()
        return None

    def _server_credentials(self) -> Optional[grpc.ServerCredentials]:
        identity = self._identity
        if identity is None:
            return None

        def config(m: Any) -> Any:
            return grpc.ssl_server_certificate_configuration(
                [(m.private_key_pem, m.cert_chain_pem)], root_certificates=m.bundle_pem
            )

        current = {"m": identity.current()}

        def fetch() -> Any:
            # Called by grpcio on every new handshake: the rotated SVID applies to new connections
            # while the server and its open connections stay up.
            m = identity.current()
            if m is current["m"]:
                return None
            current["m"] = m
            return config(m)

        return grpc.dynamic_ssl_server_credentials(config(current["m"]), fetch, require_client_authentication=True)

    def _start_server(self) -> None:
        o = self.options
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=o.max_concurrency, thread_name_prefix="nops-handler")
        server = grpc.server(
            pool,
            options=[
                ("grpc.max_send_message_length", o.max_message_bytes),
                ("grpc.max_receive_message_length", o.max_message_bytes),
                ("grpc.so_reuseport", 0),
            ],
            maximum_concurrent_rpcs=o.max_concurrency,
        )
        agent_pb2_grpc.add_AgentServiceServicer_to_server(_Servicer(self), server)
        address = f"{o.listen_host}:{o.listen_port}"
        creds = self._server_credentials()
        port = server.add_secure_port(address, creds) if creds else server.add_insecure_port(address)
        if port == 0:
            raise ConfigError(f"cannot listen on {address}")
        server.start()
        self._server = server
        self.port = port
        self.endpoint = o.endpoint or f"{o.listen_host}:{port}"

    # ---- registration and heartbeats ------------------------------------------------------

    def _register_request(self) -> Any:
        caps = [
            agent_registry_pb2.Capability(name=c.name, version=c.version, attributes=c.attributes)
            for c in sorted(self._capabilities.values(), key=lambda c: c.name)
        ]
        key = self.options.idempotency_key or self.default_idempotency_key()
        return agent_registry_pb2.RegisterAgentRequest(
            tenant=self.tenant,
            name=self.options.name,
            version=self.options.version,
            endpoint=self.endpoint,
            capabilities=caps,
            labels=self.options.labels,
            idempotency_key=key,
        )

    def default_idempotency_key(self) -> str:
        """The key derived from this agent's registration content: the same for every retry and
        restart of the same agent, different when anything registered changes."""
        # The TypeScript SDK's canonical form, so both SDKs derive the same key for the same agent.
        canonical = json.dumps(
            [
                self.tenant,
                self.options.name,
                self.options.version,
                self.endpoint,
                [
                    [c.name, c.version, dict(sorted(c.attributes.items()))]
                    for c in sorted(self._capabilities.values(), key=lambda c: c.name)
                ],
                dict(sorted(self.options.labels.items())),
            ],
            separators=(",", ":"),
            ensure_ascii=False,
        )
        return "sdk-" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:40]

    def register(self, timeout: Optional[float] = None) -> str:
        """Sends RegisterAgent once now, with the agent's idempotency key, and returns the agent id.

        The agent registers (and re-registers) on its own; this is for callers that want to retry
        by hand: however often it is called, and whatever deadline cut the earlier attempts short,
        the kernel keeps one agent. Raises KernelError (KernelUnavailableError when transient).
        """
        client = self._require_client()
        t = self.options.call_timeout if timeout is None else timeout
        try:
            response = client.call("registry", "RegisterAgent", self._register_request(), t)
        except KernelError as err:
            if err.code in _PERMANENT_REGISTRATION:
                raise RegistrationError(err.method, err.code, err.details) from None
            raise
        replayed = bool(getattr(response, "replayed", False))
        self._agent_id = response.agent.id
        self._telemetry.registered(self._ever_registered, replayed)
        log.info("registered as %s%s", response.agent.id, " (replayed)" if replayed else "")
        self._emit(
            "registered", {"agent_id": response.agent.id, "replayed": replayed, "reregistered": self._ever_registered}
        )
        self._ever_registered = True
        return response.agent.id

    def _heartbeat(self) -> None:
        assert self._client is not None and self._agent_id is not None
        load = agent_registry_pb2.AgentLoad(**self._load.report())
        request = agent_registry_pb2.HeartbeatRequest(tenant=self.tenant, id=self._agent_id, load=load)
        response = self._client.call("registry", "Heartbeat", request, self.options.call_timeout)
        if response.next_heartbeat_ms:
            # Bounded like the TypeScript SDK: a bad answer neither floods nor silences the kernel.
            self._heartbeat_interval = min(60.0, max(0.1, response.next_heartbeat_ms / 1000.0))
        self._emit("heartbeat", {"status": response.status, "next_heartbeat_ms": response.next_heartbeat_ms})

    def _run_lifecycle(self) -> None:
        backoff = 0.1
        while not self._stopping.is_set():
            wait: Optional[float] = None
            try:
                if self._agent_id is None:
                    self.register()
                    self._registered.set()
                    backoff = 0.1
                    wait = 0  # the first heartbeat tells the kernel's interval
                else:
                    self._heartbeat()
                    self._telemetry.heartbeat("ok")
                    backoff = 0.1
                self._maybe_rotate_api_key()
            except KernelError as err:
                self._emit("kernel_unavailable" if isinstance(err, KernelUnavailableError) else "warning", err)
                if self._agent_id is None:
                    self._first_error = RegistrationError(err.method, err.code, err.details)
                    if err.code in _PERMANENT_REGISTRATION:
                        log.error("RegisterAgent refused: %s", err)
                        if not self._registered.is_set():
                            self._registered.set()  # start() raises the error
                            return
                    else:
                        log.warning("RegisterAgent failed, retrying with the same idempotency key: %s", err)
                    wait, backoff = backoff, min(backoff * 2, 5.0)
                elif err.code == grpc.StatusCode.NOT_FOUND:
                    # The kernel forgot the agent (reaped, or a new database): register again.
                    log.warning("kernel no longer knows agent %s: registering again", self._agent_id)
                    self._telemetry.heartbeat(err.code.name)
                    self._agent_id = None
                    wait = 0
                else:
                    self._telemetry.heartbeat(err.code.name)
                    log.warning("heartbeat failed: %s", err)
                    wait, backoff = min(backoff, self._heartbeat_interval), min(backoff * 2, 5.0)
            except Exception:  # never let the lifecycle thread die
                log.exception("agent lifecycle step failed")
                wait, backoff = backoff, min(backoff * 2, 5.0)
            if wait is None:
                wait = self._heartbeat_interval
            if wait > 0 and self._wake.wait(wait):
                self._wake.clear()

    def _maybe_rotate_api_key(self) -> None:
        if self._next_rotation and time.monotonic() >= self._next_rotation:
            self._next_rotation = time.monotonic() + self.options.api_key_rotation_interval
            try:
                self.rotate_api_key()
            except NopsError as err:
                log.error("%s", err)
                self._emit("warning", err)

    def rotate_api_key(self, grace_period: Optional[float] = None) -> str:
        """Rotates the agent's API key now (RotateApiKey); calls already sent keep working with the
        previous key for ``grace_period`` seconds (default ``api_key_grace_period``), later calls use
        the new one. Returns the key id."""
        client = self._require_client()
        grace = self.options.api_key_grace_period if grace_period is None else grace_period
        response = client.rotate_api_key(self.tenant, grace, self.options.call_timeout)
        self._emit("api_key_rotated", {"key_id": response.api_key.key_id, "key": response.secret})
        return response.api_key.key_id

    @property
    def kernel(self) -> KernelClient:
        """The connection to the kernel (``kernel.stub("registry" | "api_keys" | "events" |
        "routing")`` and ``kernel.metadata()``): an escape hatch for calls the SDK does not wrap."""
        return self._require_client()

    @property
    def api_key(self) -> str:
        """The API key calls use now ("" without one)."""
        return self._api_key.key if self._api_key else ""

    def _shutdown(self, reason: Optional[str], grace: float) -> None:
        """Stops everything; deregisters first when ``reason`` is given (a drain, not a failed start)."""
        self._stopping.set()
        self._wake.set()
        if self._lifecycle is not None and self._lifecycle is not threading.current_thread():
            self._lifecycle.join(self.options.call_timeout + 1)
        for sub in list(self._subscriptions):
            sub.close()
        deregistered = False
        if reason is not None:
            self._emit("draining", {"reason": reason})
        if reason is not None and self._agent_id is not None and self._client is not None:
            log.info("draining (%s): %d call(s) in flight", reason, self._load.in_flight)
            request = agent_registry_pb2.DeregisterAgentRequest(
                tenant=self.tenant, id=self._agent_id, reason=f"drain: {reason}"
            )
            try:
                self._client.call("registry", "DeregisterAgent", request, self.options.call_timeout)
                log.info("deregistered %s", self._agent_id)
                deregistered = True
            except KernelError as err:
                if err.code != grpc.StatusCode.NOT_FOUND:
                    log.error("DeregisterAgent failed: %s", err)
            self._agent_id = None
            # Calls the kernel dispatched just before it forgot the agent are still served.
            time.sleep(self.options.drain_settle)
        if self._server is not None:
            # New calls are refused from here; in-flight ones get `grace` seconds to finish.
            self._server.stop(grace).wait()
        cut = self._load.in_flight
        if cut:
            log.warning("%d call(s) were still running after the drain timeout and were cancelled", cut)
        if self._client is not None:
            self._client.close()
        if self._identity is not None:
            self._identity.close()
        if self._own_loop is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._own_loop.join(5)
            if not self._loop.is_running():
                self._loop.close()
        with self._lock:
            self._state = "stopped"
        self._stopped.set()
        if reason is not None:
            self._emit("drained", {"deregistered": deregistered, "cut_calls": cut})

    # ---- serving --------------------------------------------------------------------------

    def _run_async(self, coro: Any, timeout: Optional[float]) -> Any:
        loop = self._event_loop()
        future = asyncio.run_coroutine_threadsafe(coro, loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None or self._loop.is_closed():
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name="nops-asyncio", daemon=True)
                thread.start()
                self._loop, self._own_loop = loop, thread
            return self._loop

    def _serve(self, msg: Any, context: grpc.ServicerContext, stream: bool) -> Any:
        metadata = metadata_carrier(context.invocation_metadata())
        ids = _caller_ids(context) if self._identity is not None else []
        if self._identity is not None and self.options.allowed_callers:
            td = trust_domain_of(self.spiffe_id)
            patterns = [f"spiffe://{td}/nops/kernel/*" if p == "kernel" else p for p in self.options.allowed_callers]
            if not _caller_allowed(ids, patterns):
                log.warning("refused a call from %s", ids or "an unidentified peer")
                context.abort(grpc.StatusCode.PERMISSION_DENIED, "caller not allowed")
        cap = self._capabilities.get(msg.capability)
        if cap is None or cap.stream != stream:
            context.abort(
                grpc.StatusCode.UNIMPLEMENTED,
                f"capability {msg.capability!r} is not served{' as a stream' if stream else ''} by this agent",
            )
        inv = invocation_from(msg, context, metadata, ids[0] if ids else "")
        carrier = dict(metadata)
        if inv.traceparent:
            carrier.setdefault("traceparent", inv.traceparent)
            if inv.tracestate:
                carrier.setdefault("tracestate", inv.tracestate)
        context.add_callback(inv._cancelled.set)
        if stream:
            return self._serve_stream(cap, inv, context, carrier)
        return self._serve_unary(cap, inv, context, carrier)

    def _serve_unary(self, cap: _Capability, inv: Invocation, context: grpc.ServicerContext, carrier: Dict) -> Any:
        started = time.monotonic()
        self._load.started()
        self._telemetry.call_started(cap.name)
        code = "OK"
        with self._telemetry.server_span("Handle", carrier, {"nops.capability": cap.name}) as span:
            token = _current.set(inv)
            try:
                result = cap.handler(inv)
                if inspect.isawaitable(result):
                    result = self._run_async(_with_invocation(inv, result), inv.time_remaining())
                reply = encode_result(result)
                return agent_pb2.HandleResponse(payload=reply.payload, content_type=reply.content_type)
            except BaseException as err:
                code, status, details = self._fail(err, span)
                if status is None:
                    raise
                context.abort(status, details)
            finally:
                _current.reset(token)
                self._finish(cap, started, code)

    def _serve_stream(
        self, cap: _Capability, inv: Invocation, context: grpc.ServicerContext, carrier: Dict
    ) -> Iterator[Any]:
        started = time.monotonic()
        self._load.started()
        self._telemetry.call_started(cap.name)
        code = "OK"
        with self._telemetry.server_span("HandleStream", carrier, {"nops.capability": cap.name}) as span:
            token = _current.set(inv)
            try:
                result = cap.handler(inv)
                chunks: Iterable[Any]
                if hasattr(result, "__aiter__"):
                    chunks = self._iterate_async(inv, result)
                else:
                    chunks = result
                for chunk in chunks:
                    reply = encode_result(chunk)
                    yield agent_pb2.HandleStreamResponse(payload=reply.payload, content_type=reply.content_type)
            except GeneratorExit:
                code = "CANCELLED"
                raise
            except BaseException as err:
                code, status, details = self._fail(err, span)
                if status is None:
                    raise
                context.abort(status, details)
            finally:
                _current.reset(token)
                self._finish(cap, started, code)

    def _iterate_async(self, inv: Invocation, agen: Any) -> Iterator[Any]:
        while True:
            try:
                yield self._run_async(_with_invocation(inv, agen.__anext__()), inv.time_remaining())
            except StopAsyncIteration:
                return

    def _fail(self, err: BaseException, span: Any) -> "tuple[str, Optional[grpc.StatusCode], str]":
        """The status a failed handler answers with (never an internal message)."""
        if isinstance(err, HandlerError):
            code, details = err.code, err.message
        elif isinstance(err, concurrent.futures.TimeoutError):
            code, details = grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded"
        elif isinstance(err, Exception):
            log.exception("handler failed")
            code, details = grpc.StatusCode.INTERNAL, "handler failed"
        else:
            return "CANCELLED", None, ""
        self._telemetry.record_error(span, err, code.name)
        return code.name, code, details

    def _finish(self, cap: _Capability, started: float, code: str) -> None:
        ms = (time.monotonic() - started) * 1000.0
        self._load.finished(ms, code in ("OK",))
        self._telemetry.call_ended(cap.name, code, ms)

    # ---- talking to the kernel ------------------------------------------------------------

    def _require_client(self) -> KernelClient:
        if self._client is None or self._state in ("stopped",):
            raise AgentStoppedError("the agent is not running")
        return self._client

    def _call_context(self, timeout: Optional[float], default: float) -> "tuple[float, Dict[str, str]]":
        """The deadline and trace context of a call made on behalf of the invocation being served."""
        inv = _current.get()
        t = default if timeout is None else timeout
        trace: Dict[str, str] = {}
        if inv is not None:
            remaining = inv.time_remaining()
            if remaining is not None and timeout is None:
                t = remaining
            elif remaining is not None:
                t = min(t, remaining)
            trace = {"traceparent": inv.traceparent, "tracestate": inv.tracestate}
        return t, trace

    def invoke(
        self,
        capability: str,
        payload: Union[bytes, str, Any] = b"",
        *,
        content_type: str = "",
        tenant: str = "",
        labels: Optional[Mapping[str, str]] = None,
        idempotent: bool = False,
        timeout: Optional[float] = None,
    ) -> InvokeResult:
        """Invokes ``capability`` on another agent through the kernel (RoutingService.Invoke).

        Inside a handler the call inherits the invocation's deadline and trace context; elsewhere
        ``timeout`` defaults to 30 s. ``payload``
        is bytes, text or JSON-able data (then ``content_type`` defaults accordingly).
        """
        reply = encode_result(payload)
        t, trace = self._call_context(timeout, INVOKE_TIMEOUT)
        request = routing_pb2.InvokeRequest(
            tenant=tenant or self.tenant,
            capability=capability,
            payload=reply.payload,
            content_type=content_type or reply.content_type,
            idempotent=idempotent,
            constraints=routing_pb2.RouteConstraints(labels=dict(labels or {})),
        )
        r = self._require_client().call("routing", "Invoke", request, t, trace)
        return InvokeResult(bytes(r.payload), r.content_type, r.agent_id, r.attempts)

    def invoke_stream(
        self,
        capability: str,
        payload: Union[bytes, str, Any] = b"",
        *,
        content_type: str = "",
        tenant: str = "",
        idempotent: bool = False,
        timeout: Optional[float] = None,
    ) -> Iterator[Reply]:
        """Invokes a streaming capability through the kernel (RoutingService.InvokeStream); yields chunks."""
        reply = encode_result(payload)
        t, trace = self._call_context(timeout, INVOKE_TIMEOUT)
        client = self._require_client()
        request = routing_pb2.InvokeStreamRequest(
            tenant=tenant or self.tenant,
            capability=capability,
            payload=reply.payload,
            content_type=content_type or reply.content_type,
            idempotent=idempotent,
        )
        try:
            for chunk in client.stub("routing").InvokeStream(request, timeout=t, metadata=client.metadata(trace)):
                yield Reply(bytes(chunk.payload), chunk.content_type)
        except grpc.RpcError as err:
            raise KernelError.from_rpc_error("InvokeStream", err) from None

    def publish(
        self,
        subject: str,
        payload: Union[bytes, str, Any],
        *,
        payload_type: str = "",
        headers: Optional[Mapping[str, str]] = None,
        idempotency_key: str = "",
        correlation_id: str = "",
        tenant: str = "",
        timeout: Optional[float] = None,
        attempts: int = 3,
    ) -> PublishResult:
        """Publishes an event (EventBusService.Publish) in the agent's tenant; durable once it returns.

        Retries transient failures up to ``attempts`` times under one idempotency key (a random
        one when none is given), so a retry never records the event twice. ``timeout`` (per
        attempt) defaults to the handler's remaining time inside a handler, else 10 s.
        """
        body = encode_result(payload).payload
        t, trace = self._call_context(timeout, PUBLISH_TIMEOUT)
        inv = _current.get()
        request = event_bus_pb2.PublishRequest(
            tenant=tenant or self.tenant,
            subject=subject,
            payload=body,
            payload_type=payload_type,
            headers=dict(headers or {}),
            idempotency_key=idempotency_key or uuid.uuid4().hex,
            correlation_id=correlation_id or (inv.request_id if inv else ""),
        )
        client = self._require_client()
        for attempt in range(1, max(1, attempts) + 1):
            try:
                r = client.call("events", "Publish", request, t, trace)
                return PublishResult(r.event_id, r.outbox_id, r.subject, r.duplicate)
            except KernelUnavailableError:
                if attempt >= attempts:
                    raise
                time.sleep(0.1 * 2**attempt)
        raise AssertionError("unreachable")

    def subscribe(
        self,
        consumer: str,
        handler: Callable[[Event], Any],
        *,
        filter: str = "",
        deliver_new_only: bool = False,
        max_deliveries: int = 0,
        ack_wait: Optional[float] = None,
        tenant: str = "",
    ) -> Subscription:
        """Consumes events from a durable consumer (EventBusService.Subscribe) on a background thread.

        ``handler(event)`` returning acknowledges the event; raising negatively acknowledges it
        (redelivered up to ``max_deliveries``, then dead-lettered). The stream is re-opened with
        backoff when it breaks. Returns a Subscription to ``close()``.
        """
        from google.protobuf import duration_pb2

        client = self._require_client()
        request = event_bus_pb2.SubscribeRequest(
            tenant=tenant or self.tenant,
            consumer=consumer,
            filter=filter,
            deliver_policy=event_bus_pb2.DELIVER_POLICY_NEW if deliver_new_only else event_bus_pb2.DELIVER_POLICY_ALL,
            max_deliveries=max_deliveries,
        )
        if ack_wait is not None:
            request.ack_wait.CopyFrom(duration_pb2.Duration(seconds=int(ack_wait), nanos=int(ack_wait % 1 * 1e9)))
        sub = Subscription(consumer)

        def ack(token: str, action: int) -> None:
            client.call(
                "events",
                "Ack",
                event_bus_pb2.AckRequest(tenant=request.tenant, consumer=consumer, ack_token=token, action=action),
                self.options.call_timeout,
            )

        def loop() -> None:
            backoff = 0.2
            while not sub._stop.is_set():
                try:
                    call = client.stub("events").Subscribe(request, metadata=client.metadata())
                    sub._call = call
                    for resp in call:
                        backoff = 0.2
                        m = resp.message
                        env = envelope_pb2.EventEnvelope()
                        env.ParseFromString(m.envelope)
                        event = Event(
                            m.subject,
                            m.event_id or env.id,
                            env.type,
                            bytes(env.payload),
                            env.payload_type,
                            dict(m.headers),
                            m.delivery_count,
                            env,
                        )
                        try:
                            handler(event)
                            action = event_bus_pb2.ACK_ACTION_ACK
                        except Exception:
                            log.exception("event handler failed on %s; it will be redelivered", event.event_id)
                            action = event_bus_pb2.ACK_ACTION_NAK
                        try:
                            ack(m.ack_token, action)
                        except KernelError as err:
                            log.warning("Ack failed (the event will be redelivered): %s", err)
                except grpc.RpcError as err:
                    if sub._stop.is_set():
                        return
                    log.warning("subscription %s broke: %s", consumer, KernelError.from_rpc_error("Subscribe", err))
                if sub._stop.wait(backoff):
                    return
                backoff = min(backoff * 2, 5.0)

        sub._thread = threading.Thread(target=loop, name=f"nops-subscribe-{consumer}", daemon=True)
        self._subscriptions.append(sub)
        sub._thread.start()
        return sub


def _can_mint(directory: str) -> bool:
    """True when the dev CA is readable and cryptography is installed (what identity "dev" needs)."""
    if not all(os.access(os.path.join(directory, f), os.R_OK) for f in ("ca.pem", "ca.key")):
        return False
    try:
        import cryptography.x509  # noqa: F401
    except ImportError:
        return False
    return True


async def _with_invocation(inv: Invocation, awaitable: Any) -> Any:
    token = _current.set(inv)
    try:
        return await awaitable
    finally:
        _current.reset(token)


def create_agent(
    options: Optional[AgentOptions] = None, *, handlers: Optional[Dict[str, Handler]] = None, **kwargs: Any
) -> Agent:
    """Makes an agent from options (an AgentOptions, keyword arguments, or both; see AgentOptions
    for each one and its default). ``handlers`` maps capability names to unary handlers."""
    agent = Agent(resolve_options(options, **kwargs))
    for name, fn in (handlers or {}).items():
        agent.handle(name, fn)
    return agent
