"""Options of an agent: every field documented with its default, checked in one place."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, fields, replace
from typing import Any, Dict, List, Mapping, Optional

from .errors import ConfigError

__all__ = ["AgentOptions", "resolve_options", "DEFAULT_KERNEL_ADDRESS", "DEFAULT_KERNEL_HTTP_ADDRESS"]

#: The kernel's mTLS gRPC port (`npm start`'s default).
DEFAULT_KERNEL_ADDRESS = "localhost:50051"
#: The kernel's HTTP/2 port, where callers without a client certificate (API keys) are accepted.
DEFAULT_KERNEL_HTTP_ADDRESS = "localhost:8080"
#: Where `npm start`'s dev issuer writes its files, relative to the kernel's working directory.
DEFAULT_IDENTITY_DIR = "./data/dev-identity"

_IDENTITIES = ("auto", "workload-api", "dev", "files", "none")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


@dataclass
class AgentOptions:
    """How an agent joins the kernel. Every option has a default; ``name`` is needed unless an agent
    SVID supplies it.

    Options left at their default are also read from the environment (the variable is named on
    each field), so one program runs unchanged in development and under SPIRE.
    """

    name: str = ""
    """Agent name, shown in the registry (letters, digits, ``.``, ``_``, ``-``). Default: the
    ``<name>`` of an agent SVID (``spiffe://<td>/nops/tenant/<tenant>/agent/<name>``), which the
    kernel requires it to match; required when the SVID names no agent."""

    tenant: str = ""
    """Tenant the agent serves. Default: ``NOPS_TENANT``, else the tenant in the SVID's SPIFFE ID
    (``spiffe://<td>/nops/tenant/<tenant>/...``), else ``"default"``."""

    version: str = "0.0.0"
    """Version of the agent, recorded at registration."""

    labels: Dict[str, str] = field(default_factory=dict)
    """Labels recorded at registration (routing constraints match on them). Default: none."""

    kernel_address: str = ""
    """``host:port`` of the kernel; the TypeScript SDK's URL forms work too (``https://host:port``,
    and ``http://host:port`` for a plaintext kernel, which implies ``identity="none"``). Default:
    ``NOPS_KERNEL_ADDRESS`` or ``NOPS_KERNEL_URL``, else ``localhost:50051`` (its mTLS gRPC port),
    or ``localhost:8080`` (its HTTP/2 port) when an API key authenticates."""

    kernel_server_name: str = ""
    """TLS name to check on the kernel's certificate instead of the host of ``kernel_address``.
    Default: the host itself."""

    identity: str = "auto"
    """Where the agent's X509-SVID comes from: ``"workload-api"`` (the SPIFFE Workload API),
    ``"dev"`` (minted by the SDK from the kernel's dev CA in ``identity_dir`` as
    ``spiffe://<td>/nops/tenant/<tenant>/agent/<name>``, like the TypeScript SDK; needs the
    ``cryptography`` package), ``"files"`` (PEM files), ``"none"`` (plaintext, for a kernel run
    with ``identity.source: none``) or ``"auto"``: the Workload API when a socket is configured,
    else dev when the CA files are readable and cryptography is installed, else the SVID files
    when they exist, else none."""

    workload_api_socket: str = ""
    """SPIFFE Workload API address (``unix:///path`` or ``tcp://ip:port``). Default:
    ``SPIFFE_ENDPOINT_SOCKET``."""

    spiffe_id: str = ""
    """Which SVID to use when the Workload API hands out several. Default: the first (SPIFFE's default)."""

    identity_dir: str = ""
    """The kernel's dev issuer directory (CA for ``"dev"``, SVID files for ``"files"``). Default:
    ``NOPS_IDENTITY_DIR``, else ``./data/dev-identity``."""

    svid_file: str = ""
    """Certificate chain PEM, leaf first. Default: ``<identity_dir>/svid.pem``."""

    svid_key_file: str = ""
    """PKCS#8 private key PEM of the SVID. Default: ``<identity_dir>/svid.key``."""

    bundle_file: str = ""
    """Trust bundle PEM (the kernel's CA). Default: ``<identity_dir>/bundle.pem``."""

    dev_svid_ttl: float = 3600.0
    """Lifetime, seconds, of a dev-minted SVID; a new one is minted at half-life."""

    svid_poll_interval: float = 5.0
    """Seconds between checks of the SVID files for a rotated SVID."""

    api_key: str = ""
    """API key (``nops_<id>_<secret>``) to authenticate calls to the kernel with, instead of the
    SVID. Default: ``NOPS_API_KEY``, else the contents of ``api_key_file``. Calls then go to the
    kernel's HTTP/2 port with server-only TLS (the gRPC port requires a client certificate)."""

    api_key_file: str = ""
    """File holding the API key; a rotated key is written back to it (atomically) so a restart
    uses the new one. Default: ``NOPS_API_KEY_FILE``."""

    api_key_rotation_interval: float = 0.0
    """Seconds between automatic API key rotations; 0 rotates only when ``rotate_api_key()`` is called."""

    api_key_grace_period: float = 3600.0
    """Seconds the previous API key keeps working after a rotation, so calls already sent with it succeed."""

    kernel_ca_file: str = ""
    """CA bundle to verify the kernel with when there is no SVID (API key over TLS). Default:
    ``bundle_file`` when it exists; without either, the kernel is reached in plaintext."""

    listen_host: str = "127.0.0.1"
    """Interface the agent's AgentService listens on."""

    listen_port: int = 0
    """Port the agent listens on; 0 picks a free one."""

    endpoint: str = ""
    """Where the kernel reaches this agent (``host:port``), recorded at registration. Default:
    ``NOPS_AGENT_ENDPOINT``, else ``<listen_host>:<bound port>``."""

    idempotency_key: str = ""
    """RegisterAgent idempotency key, so a retried registration never creates a second agent.
    Default: derived from tenant, name, version, endpoint, capabilities and labels, so it is the
    same for every retry and restart of the same agent, and changes when its content does."""

    call_timeout: float = 5.0
    """Deadline, seconds, of each call the SDK makes to the kernel (register, heartbeat, ...)."""

    register_timeout: float = 30.0
    """How long ``start()`` keeps retrying the first registration before it raises."""

    heartbeat_interval: float = 5.0
    """Seconds between heartbeats until the kernel names its own interval (it does on every answer)."""

    max_concurrency: int = 64
    """Most calls served at once (worker threads of the server)."""

    max_message_bytes: int = 4 * 1024 * 1024
    """Largest request or response message, bytes (the kernel's default limit)."""

    drain_timeout: float = 30.0
    """On drain (SIGTERM), how long in-flight calls may take to finish before they are cancelled."""

    drain_settle: float = 0.25
    """On drain, seconds between deregistering and refusing new calls, for calls the kernel
    dispatched just before it forgot the agent."""

    allowed_callers: List[str] = field(default_factory=lambda: ["kernel"])
    """SPIFFE IDs allowed to call the agent over mTLS: exact IDs, ``prefix/*`` patterns, or
    ``"kernel"`` for any kernel of the agent's trust domain (``spiffe://<td>/nops/kernel/*``).
    Empty: any caller with a certificate of the trust bundle."""

    handle_signals: bool = True
    """``run()`` stops the agent gracefully on SIGTERM and SIGINT."""

    tracer_provider: Any = None
    """OpenTelemetry TracerProvider. Default: the global one (when opentelemetry-api is installed)."""

    meter_provider: Any = None
    """OpenTelemetry MeterProvider. Default: the global one (when opentelemetry-api is installed)."""


def _positive(o: AgentOptions, name: str, allow_zero: bool = False) -> None:
    value = getattr(o, name)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{name} must be a {'non-negative' if allow_zero else 'positive'} number (got {value!r})")


def resolve_options(
    options: Optional[AgentOptions] = None, env: Optional[Mapping[str, str]] = None, **overrides: Any
) -> AgentOptions:
    """Fills defaults (from ``env``, default ``os.environ``) and checks every option; raises
    ConfigError naming the option."""
    env = os.environ if env is None else env
    known = {f.name for f in fields(AgentOptions)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigError(f"unknown option {unknown[0]!r}")
    o = replace(options or AgentOptions(), **overrides)
    if not isinstance(o.name, str) or (o.name and not _NAME.match(o.name)):
        raise ConfigError(f"name must be 1..100 letters, digits, '.', '_' or '-' (got {o.name!r})")
    if o.identity not in _IDENTITIES:
        raise ConfigError(f"identity must be one of {', '.join(_IDENTITIES)} (got {o.identity!r})")
    o.tenant = o.tenant or env.get("NOPS_TENANT", "")
    o.workload_api_socket = o.workload_api_socket or env.get("SPIFFE_ENDPOINT_SOCKET", "")
    o.identity_dir = o.identity_dir or env.get("NOPS_IDENTITY_DIR", "") or DEFAULT_IDENTITY_DIR
    o.svid_file = o.svid_file or os.path.join(o.identity_dir, "svid.pem")
    o.svid_key_file = o.svid_key_file or os.path.join(o.identity_dir, "svid.key")
    o.bundle_file = o.bundle_file or os.path.join(o.identity_dir, "bundle.pem")
    o.api_key_file = o.api_key_file or env.get("NOPS_API_KEY_FILE", "")
    o.api_key = o.api_key or env.get("NOPS_API_KEY", "")
    if not o.api_key and o.api_key_file:
        try:
            with open(o.api_key_file, encoding="utf-8") as f:
                o.api_key = f.read().strip()
        except OSError as err:
            raise ConfigError(f"api_key_file {o.api_key_file!r} cannot be read: {err}") from err
    if o.api_key and not re.match(r"^nops_[0-9a-f]{24}_[A-Za-z0-9_-]+$", o.api_key):
        raise ConfigError("api_key is not a NOPS API key (nops_<key id>_<secret>)")
    default_address = DEFAULT_KERNEL_HTTP_ADDRESS if o.api_key else DEFAULT_KERNEL_ADDRESS
    o.kernel_address = (
        o.kernel_address or env.get("NOPS_KERNEL_ADDRESS", "") or env.get("NOPS_KERNEL_URL", "") or default_address
    )
    m = re.match(r"^(https?)://([^/]+)/?$", o.kernel_address)
    if m:
        o.kernel_address = m.group(2)
        if m.group(1) == "http":
            if o.identity not in ("auto", "none"):
                raise ConfigError(
                    f"kernel_address http:// is a plaintext kernel: identity must be none (got {o.identity!r})"
                )
            o.identity = "none"
    if not re.match(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9._-]+):\d{1,5}$", o.kernel_address):
        raise ConfigError(f"kernel_address must be host:port (got {o.kernel_address!r})")
    o.endpoint = o.endpoint or env.get("NOPS_AGENT_ENDPOINT", "")
    for name in (
        "call_timeout",
        "register_timeout",
        "heartbeat_interval",
        "drain_timeout",
        "svid_poll_interval",
        "dev_svid_ttl",
    ):
        _positive(o, name)
    for name in ("api_key_rotation_interval", "api_key_grace_period", "drain_settle"):
        _positive(o, name, allow_zero=True)
    if not isinstance(o.listen_port, int) or not 0 <= o.listen_port <= 65535:
        raise ConfigError(f"listen_port must be 0..65535 (got {o.listen_port!r})")
    if not isinstance(o.max_concurrency, int) or o.max_concurrency < 1:
        raise ConfigError(f"max_concurrency must be a positive integer (got {o.max_concurrency!r})")
    if not isinstance(o.max_message_bytes, int) or o.max_message_bytes < 1024:
        raise ConfigError(f"max_message_bytes must be at least 1024 (got {o.max_message_bytes!r})")
    if o.idempotency_key and (len(o.idempotency_key) > 128 or not o.idempotency_key.isprintable()):
        raise ConfigError("idempotency_key must be at most 128 printable ASCII characters")
    if not isinstance(o.labels, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in o.labels.items()
    ):
        raise ConfigError("labels must map strings to strings")
    o.labels = dict(o.labels)
    o.allowed_callers = list(o.allowed_callers)
    return o
