"""The agent's connection to the kernel: credentials that follow SVID and API key rotations."""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from typing import Any, Callable, Dict, List, Optional, Tuple

import grpc
from google.protobuf import duration_pb2

from ._gen.nops.kernel.v1 import (
    agent_registry_pb2_grpc,
    api_key_pb2,
    api_key_pb2_grpc,
    event_bus_pb2_grpc,
    routing_pb2_grpc,
)
from .errors import ApiKeyRotationError, KernelError
from .identity import IdentitySource
from .telemetry import Telemetry
from .x509 import X509Material

__all__ = ["KernelClient", "ApiKeyHolder"]

log = logging.getLogger("nops_agent.kernel")

# An old channel is closed this long after a rotation replaced it, so calls on it finish first.
_RETIRE_AFTER = 60.0


class ApiKeyHolder:
    """The current API key; a rotation swaps it for every call that starts afterwards."""

    def __init__(self, key: str, file: str = "") -> None:
        self._lock = threading.Lock()
        self._key = key
        self._file = file

    @property
    def key(self) -> str:
        """The key new calls use."""
        with self._lock:
            return self._key

    @property
    def key_id(self) -> str:
        """The public part of the key (``nops_<key_id>_<secret>``)."""
        return self.key.split("_")[1]

    def replace(self, key: str) -> None:
        """Uses ``key`` from now on and writes it to the key file, if there is one."""
        if self._file:
            # Atomic: a crash leaves either key in the file, never half of one.
            directory = os.path.dirname(os.path.abspath(self._file))
            fd, tmp = tempfile.mkstemp(prefix=".nops-api-key.", dir=directory)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    f.write(key + "\n")
                os.chmod(tmp, 0o600)
                os.replace(tmp, self._file)
            except BaseException:
                if os.path.exists(tmp):
                    os.unlink(tmp)
                raise
        with self._lock:
            self._key = key


class KernelClient:
    """Stubs of the kernel's services over one channel, rebuilt when the SVID rotates.

    Every call carries the API key (when one is used) and the caller's trace context.
    """

    def __init__(
        self,
        address: str,
        identity: Optional[IdentitySource],
        api_key: Optional[ApiKeyHolder],
        ca_pem: Optional[bytes],
        server_name: str,
        max_message_bytes: int,
        telemetry: Telemetry,
    ) -> None:
        self._address = address
        self._identity = identity
        self._api_key = api_key
        self._ca_pem = ca_pem
        self._telemetry = telemetry
        self._lock = threading.Lock()
        self._options: List[Tuple[str, Any]] = [
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
            # The SDK retries itself with idempotency keys; transparent retries would hide attempts.
            ("grpc.enable_retries", 0),
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 2000),
        ]
        if server_name:
            self._options.append(("grpc.ssl_target_name_override", server_name))
        self._closed = False
        self._timers: List[threading.Timer] = []
        self._retired: List[grpc.Channel] = []
        self._channel = self._open()
        self._stubs = self._make_stubs(self._channel)
        self._unsubscribe: Optional[Callable[[], None]] = None
        # With an API key the SVID does not authenticate calls, so its rotation changes nothing here.
        if identity is not None and api_key is None:
            self._unsubscribe = identity.on_update(self._rotate_channel)

    def _credentials(self) -> Optional[grpc.ChannelCredentials]:
        if self._api_key is not None:
            # The kernel decides by the first credential present: a client certificate would win over
            # the key, so key callers present none (kernel authn: mTLS, then bearer, then x-api-key).
            ca = self._ca_pem
            if ca is None and self._identity is not None:
                ca = self._identity.current().bundle_pem
            return grpc.ssl_channel_credentials(root_certificates=ca) if ca else None
        if self._identity is None:
            return None
        m: X509Material = self._identity.current()
        return grpc.ssl_channel_credentials(
            root_certificates=m.bundle_pem, private_key=m.private_key_pem, certificate_chain=m.cert_chain_pem
        )

    def _open(self) -> grpc.Channel:
        creds = self._credentials()
        if creds is None:
            return grpc.insecure_channel(self._address, options=self._options)
        return grpc.secure_channel(self._address, creds, options=self._options)

    @staticmethod
    def _make_stubs(channel: grpc.Channel) -> Dict[str, Any]:
        return {
            "registry": agent_registry_pb2_grpc.AgentRegistryServiceStub(channel),
            "api_keys": api_key_pb2_grpc.ApiKeyServiceStub(channel),
            "events": event_bus_pb2_grpc.EventBusServiceStub(channel),
            "routing": routing_pb2_grpc.RoutingServiceStub(channel),
        }

    def _rotate_channel(self, _material: X509Material) -> None:
        with self._lock:
            if self._closed:
                return
            old = self._channel
            self._channel = self._open()
            self._stubs = self._make_stubs(self._channel)
            self._retired.append(old)
            timer = threading.Timer(_RETIRE_AFTER, self._retire, args=(old,))
            timer.daemon = True
            timer.start()
            self._timers.append(timer)
        log.info("kernel channel now presents the rotated SVID")

    def _retire(self, channel: grpc.Channel) -> None:
        with self._lock:
            if channel in self._retired:
                self._retired.remove(channel)
        channel.close()

    def metadata(self, extra: Optional[Dict[str, str]] = None) -> List[Tuple[str, str]]:
        """Call metadata: API key, trace context (the current span's, else ``extra``'s)."""
        md: Dict[str, str] = {}
        if not self._telemetry.inject(md) and extra:
            md.update({k: v for k, v in extra.items() if v})
        if self._api_key is not None:
            md["x-api-key"] = self._api_key.key
        return list(md.items())

    def stub(self, service: str) -> Any:
        """The stub of a kernel service on the current channel."""
        with self._lock:
            return self._stubs[service]

    def call(
        self, service: str, method: str, request: Any, timeout: float, trace: Optional[Dict[str, str]] = None
    ) -> Any:
        """One unary call; grpc errors become KernelError (KernelUnavailableError when transient)."""
        fn = getattr(self.stub(service), method)
        with self._telemetry.client_span(f"{service}/{method}"):
            try:
                return fn(request, timeout=timeout, metadata=self.metadata(trace))
            except grpc.RpcError as err:
                error = KernelError.from_rpc_error(method, err)
                self._telemetry.kernel_error(method, error.code.name)
                raise error from None

    def rotate_api_key(self, tenant: str, grace_period: float, timeout: float) -> "api_key_pb2.RotateApiKeyResponse":
        """Rotates the key this client uses; calls already sent keep the old one, valid for the grace period."""
        if self._api_key is None:
            raise ApiKeyRotationError("the agent uses no API key")
        grace = duration_pb2.Duration()
        grace.FromNanoseconds(int(grace_period * 1e9))
        request = api_key_pb2.RotateApiKeyRequest(tenant=tenant, key_id=self._api_key.key_id, grace_period=grace)
        try:
            response = self.call("api_keys", "RotateApiKey", request, timeout)
        except KernelError as err:
            raise ApiKeyRotationError(f"RotateApiKey failed, keeping the current key: {err}") from err
        self._api_key.replace(response.secret)
        log.info("API key %s rotated; the previous secret works for %g s", response.api_key.key_id, grace_period)
        return response

    def close(self) -> None:
        """Closes the channel; calls still running on it are cancelled."""
        with self._lock:
            self._closed = True
            for timer in self._timers:
                timer.cancel()
            channels = [self._channel, *self._retired]
            self._retired.clear()
        if self._unsubscribe:
            self._unsubscribe()
        for channel in channels:
            channel.close()
