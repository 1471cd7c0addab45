"""Where the agent's X509-SVID comes from: the SPIFFE Workload API or the dev issuer's files."""

from __future__ import annotations

import logging
import os
import threading
from typing import Callable, List, Optional

import grpc

from ._gen.spiffe.workload import workload_pb2, workload_pb2_grpc
from .errors import IdentityError
from .x509 import X509Material, der_to_pem, pem_blocks, spiffe_id_of, split_der

__all__ = ["IdentitySource", "FileIdentitySource", "WorkloadApiIdentitySource"]

log = logging.getLogger("nops_agent.identity")

Listener = Callable[[X509Material], None]


class IdentitySource:
    """A current X509-SVID that may change (rotation); listeners hear every change."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._current: Optional[X509Material] = None
        self._listeners: List[Listener] = []
        self._error: Optional[BaseException] = None

    def current(self) -> X509Material:
        """The SVID now; raises IdentityError before the first one arrived."""
        with self._lock:
            if self._current is None:
                raise IdentityError("no SVID yet") from self._error
            return self._current

    def wait_ready(self, timeout: float) -> X509Material:
        """Waits up to ``timeout`` seconds for the first SVID."""
        if not self._ready.wait(timeout):
            raise IdentityError(f"no SVID within {timeout:g} s") from self._error
        return self.current()

    def on_update(self, listener: Listener) -> Callable[[], None]:
        """Calls ``listener`` with each new SVID (not the current one); returns an unsubscribe function."""
        with self._lock:
            self._listeners.append(listener)

        def remove() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return remove

    def close(self) -> None:
        """Stops following the source."""

    def _publish(self, material: X509Material) -> None:
        with self._lock:
            if self._current == material:
                return
            first = self._current is None
            self._current = material
            listeners = list(self._listeners)
        self._ready.set()
        if first:
            return
        log.info("SVID rotated (%s)", material.spiffe_id)
        for listener in listeners:
            try:
                listener(material)
            except Exception:  # a bad listener must not stop rotation for the others
                log.exception("SVID update listener failed")


class FileIdentitySource(IdentitySource):
    """Reads PEM files (the kernel's dev issuer writes them) and reloads them when they change.

    The files are re-read every ``poll_interval`` seconds; a half-written set (the issuer writes
    key then certificate) is skipped until the key matches again on the next poll.
    """

    def __init__(self, cert_file: str, key_file: str, bundle_file: str, poll_interval: float = 5.0) -> None:
        super().__init__()
        self._files = (cert_file, key_file, bundle_file)
        self._stamp: Optional[tuple] = None
        self._stop = threading.Event()
        self._load(initial=True)
        self._thread = threading.Thread(target=self._poll, args=(poll_interval,), name="nops-svid-files", daemon=True)
        self._thread.start()

    def _load(self, initial: bool = False) -> None:
        try:
            stamp = tuple(os.stat(f).st_mtime_ns for f in self._files)
            if stamp == self._stamp:
                return
            cert, key, bundle = (_read(f) for f in self._files)
        except OSError as err:
            if initial:
                raise IdentityError(f"cannot read SVID files: {err}") from err
            log.warning("cannot re-read SVID files, keeping the current SVID: %s", err)
            return
        certs = pem_blocks(cert, "CERTIFICATE")
        if not certs or not pem_blocks(key, "PRIVATE KEY") or not pem_blocks(bundle, "CERTIFICATE"):
            if initial:
                raise IdentityError(f"SVID files {self._files} hold no certificate, key or bundle")
            return
        self._stamp = stamp
        self._publish(X509Material(cert, key, bundle, spiffe_id_of(certs[0])))

    def _poll(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self._load()

    def close(self) -> None:
        self._stop.set()


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


# SPIFFE Workload API §6.2.1: every call carries this header; servers refuse calls without it.
WORKLOAD_METADATA = (("workload.spiffe.io", "true"),)


def workload_target(socket: str) -> str:
    """A grpcio target for SPIFFE_ENDPOINT_SOCKET ("unix:///path", "unix:/path", "tcp://ip:port")."""
    if socket.startswith("unix://"):
        return "unix:" + socket[len("unix://") :]
    if socket.startswith("unix:"):
        return socket
    if socket.startswith("tcp://"):
        return socket[len("tcp://") :]
    if socket.startswith("/"):
        return "unix:" + socket
    raise IdentityError(f"workload API socket {socket!r} is not unix:///path or tcp://ip:port")


def material_from_response(resp: "workload_pb2.X509SVIDResponse", spiffe_id: str = "") -> X509Material:
    """The SVID to use from one FetchX509SVID message: ``spiffe_id`` when given, else the first (default)."""
    if not resp.svids:
        raise IdentityError("workload API sent no SVID")
    chosen = resp.svids[0]
    if spiffe_id:
        matches = [s for s in resp.svids if s.spiffe_id == spiffe_id]
        if not matches:
            raise IdentityError(f"workload API has no SVID for {spiffe_id}")
        chosen = matches[0]
    chain = split_der(chosen.x509_svid)
    bundles = split_der(chosen.bundle)
    for der in resp.federated_bundles.values():
        bundles.extend(split_der(der))
    return X509Material(
        cert_chain_pem=der_to_pem("CERTIFICATE", chain),
        private_key_pem=der_to_pem("PRIVATE KEY", [chosen.x509_svid_key]),
        bundle_pem=der_to_pem("CERTIFICATE", bundles),
        spiffe_id=chosen.spiffe_id or spiffe_id_of(chain[0]),
    )


class WorkloadApiIdentitySource(IdentitySource):
    """Streams X509-SVIDs from the SPIFFE Workload API (a SPIRE agent) and follows rotations.

    The stream is re-opened with backoff (0.2 s doubling to 10 s) whenever it ends; the current
    SVID stays in use meanwhile.
    """

    def __init__(self, socket: str, spiffe_id: str = "") -> None:
        super().__init__()
        self._target = workload_target(socket)
        self._spiffe_id = spiffe_id
        self._stop = threading.Event()
        self._channel: Optional[grpc.Channel] = None
        self._thread = threading.Thread(target=self._run, name="nops-workload-api", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        backoff = 0.2
        while not self._stop.is_set():
            channel = grpc.insecure_channel(self._target)
            self._channel = channel
            try:
                stub = workload_pb2_grpc.SpiffeWorkloadAPIStub(channel)
                for resp in stub.FetchX509SVID(workload_pb2.X509SVIDRequest(), metadata=WORKLOAD_METADATA):
                    try:
                        self._publish(material_from_response(resp, self._spiffe_id))
                        backoff = 0.2
                    except IdentityError as err:
                        self._error = err
                        log.error("workload API update unusable, keeping the current SVID: %s", err)
            except grpc.RpcError as err:
                if self._stop.is_set():
                    return
                self._error = IdentityError(f"workload API {self._target}: {err.code().name}: {err.details()}")
                log.warning("workload API stream ended: %s", self._error)
            finally:
                channel.close()
            if self._stop.wait(backoff):
                return
            backoff = min(backoff * 2, 10.0)

    def close(self) -> None:
        self._stop.set()
        if self._channel is not None:
            self._channel.close()
