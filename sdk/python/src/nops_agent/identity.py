"""Where the agent's X509-SVID comes from: the SPIFFE Workload API or the dev issuer's files."""

from __future__ import annotations

import logging
import os
import threading
from typing import Any, Callable, List, Optional

import grpc

from ._gen.spiffe.workload import workload_pb2, workload_pb2_grpc
from .errors import IdentityError
from .x509 import X509Material, der_to_pem, pem_blocks, spiffe_id_of, split_der

__all__ = ["IdentitySource", "FileIdentitySource", "WorkloadApiIdentitySource", "DevIssuerIdentitySource"]

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

    The files are checked every ``poll_interval`` seconds; a change is taken only once the files
    stayed the same for a whole interval, so a set caught between the writer's renames (new key,
    old certificate) is never served.
    """

    def __init__(self, cert_file: str, key_file: str, bundle_file: str, poll_interval: float = 5.0) -> None:
        super().__init__()
        self._files = (cert_file, key_file, bundle_file)
        self._stamp: Optional[tuple] = None
        self._pending: Optional[tuple] = None
        self._stop = threading.Event()
        self._load(initial=True)
        self._thread = threading.Thread(target=self._poll, args=(poll_interval,), name="nops-svid-files", daemon=True)
        self._thread.start()

    def _load(self, initial: bool = False) -> None:
        try:
            stamp = tuple((os.stat(f).st_mtime_ns, os.stat(f).st_size) for f in self._files)
            if stamp == self._stamp:
                self._pending = None
                return
            if not initial and stamp != self._pending:
                self._pending = stamp  # changed since the last check: wait until it settles
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
        self._pending = None
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


def _not_after(cert: Any) -> Any:
    import datetime

    # cryptography >= 42 has the aware property (and deprecates the naive one); Debian 12 has 38.
    aware = getattr(cert, "not_valid_after_utc", None)
    return aware if aware is not None else cert.not_valid_after.replace(tzinfo=datetime.timezone.utc)


class DevIssuerIdentitySource(IdentitySource):
    """Mints the agent's own SVID (``spiffe://<td>/nops/tenant/<tenant>/agent/<name>``) from the
    kernel's development CA (``ca.pem`` + ``ca.key`` in the dev issuer's directory), and mints a new
    one at half-life so rotation runs in development too. Needs the ``cryptography`` package
    (Debian: python3-cryptography). Development only: it reads the CA's private key.
    """

    def __init__(self, directory: str, tenant: str, name: str, ttl: float = 3600.0) -> None:
        super().__init__()
        try:
            from cryptography import x509  # noqa: F401  (optional dependency)
        except ImportError as err:
            raise IdentityError("dev identity needs the cryptography package (python3-cryptography)") from err
        self._dir = directory
        self._tenant = tenant
        self._name = name
        self._ttl = ttl
        self._stop = threading.Event()
        self._publish(self._mint())
        self._thread = threading.Thread(target=self._renew, name="nops-dev-svid", daemon=True)
        self._thread.start()

    def _mint(self) -> X509Material:
        import datetime
        import ipaddress

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID

        try:
            ca_pem = _read(os.path.join(self._dir, "ca.pem"))
            ca_key = serialization.load_pem_private_key(_read(os.path.join(self._dir, "ca.key")), password=None)
        except (OSError, ValueError) as err:
            raise IdentityError(
                f"dev identity: cannot read ca.pem/ca.key in {self._dir} (start the kernel once with the dev issuer)"
            ) from err
        ca = x509.load_pem_x509_certificate(ca_pem)
        trust_domain = spiffe_id_of(ca.public_bytes(serialization.Encoding.DER)) or "spiffe://nops.local"
        spiffe_id = f"{trust_domain}/nops/tenant/{self._tenant}/agent/{self._name}"
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(x509.oid.NameOID.ORGANIZATION_NAME, trust_domain[9:])]))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            # Backdated like the kernel's issuer, for clock skew between processes.
            .not_valid_before(now - datetime.timedelta(seconds=60))
            .not_valid_after(min(now + datetime.timedelta(seconds=self._ttl), _not_after(ca)))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
            # X509-SVID §4.4: leaves allow both TLS roles.
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            # The SPIFFE ID, plus loopback names so plain TLS clients (and SNI) on this machine match
            # too: development only, like the kernel's own dev SVID.
            .add_extension(
                x509.SubjectAlternativeName(
                    [
                        x509.UniformResourceIdentifier(spiffe_id),
                        x509.DNSName("localhost"),
                        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    ]
                ),
                critical=False,
            )
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        return X509Material(
            cert_chain_pem=cert.public_bytes(serialization.Encoding.PEM),
            private_key_pem=key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ),
            bundle_pem=ca_pem,
            spiffe_id=spiffe_id,
        )

    def _renew(self) -> None:
        while not self._stop.wait(self._ttl / 2):
            try:
                self._publish(self._mint())
            except Exception as err:  # keep the current SVID; the next half-life tries again
                self._error = err
                log.error("dev identity could not mint a new SVID: %s", err)

    def close(self) -> None:
        self._stop.set()
