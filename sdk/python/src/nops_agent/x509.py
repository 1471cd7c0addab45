"""DER/PEM conversions and SPIFFE ID extraction, without a crypto library (grpcio does the TLS)."""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from typing import List, Optional

from .errors import IdentityError

__all__ = ["X509Material", "split_der", "der_to_pem", "pem_blocks", "spiffe_id_of", "tenant_of"]


@dataclass(frozen=True)
class X509Material:
    """One X509-SVID with its key and the trust bundle, PEM encoded (what grpcio takes)."""

    #: Certificate chain, leaf first.
    cert_chain_pem: bytes
    #: PKCS#8 private key of the leaf.
    private_key_pem: bytes
    #: Trust anchors to verify peers with (every trust domain's CA certificates).
    bundle_pem: bytes
    #: SPIFFE ID of the leaf ("" when it has none).
    spiffe_id: str


def _der_length(der: bytes, i: int) -> "tuple[int, int]":
    """(content length, index of content) of the ASN.1 element whose length byte is at i."""
    first = der[i]
    if first < 0x80:
        return first, i + 1
    n = first & 0x7F
    if n == 0 or n > 4 or i + 1 + n > len(der):
        raise IdentityError("malformed DER length")
    return int.from_bytes(der[i + 1 : i + 1 + n], "big"), i + 1 + n


def split_der(der: bytes) -> List[bytes]:
    """Splits concatenated DER certificates (Workload API x509_svid and bundle fields, §5.1)."""
    out: List[bytes] = []
    i = 0
    while i < len(der):
        if der[i] != 0x30:
            raise IdentityError("DER certificate does not start with a SEQUENCE")
        length, start = _der_length(der, i + 1)
        end = start + length
        if end > len(der):
            raise IdentityError("truncated DER certificate")
        out.append(der[i:end])
        i = end
    return out


def der_to_pem(label: str, ders: List[bytes]) -> bytes:
    """PEM blocks of the given label, one per DER item."""
    parts = []
    for der in ders:
        b64 = base64.b64encode(der).decode("ascii")
        lines = "\n".join(b64[j : j + 64] for j in range(0, len(b64), 64))
        parts.append(f"-----BEGIN {label}-----\n{lines}\n-----END {label}-----\n")
    return "".join(parts).encode("ascii")


_PEM = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\s+(.*?)-----END \1-----", re.S)


def pem_blocks(pem: bytes, label: str) -> List[bytes]:
    """The DER contents of every PEM block with this label."""
    return [base64.b64decode(b"".join(m.group(2).split())) for m in _PEM.finditer(pem) if m.group(1) == label.encode()]


# GeneralName uniformResourceIdentifier is [6] IMPLICIT IA5String (RFC 5280 §4.2.1.6): tag 0x86.
_URI_SAN = re.compile(rb"\x86([\x00-\x7f])(spiffe://)")


def spiffe_id_of(cert_der: bytes) -> str:
    """The spiffe:// URI SAN of a certificate, "" when there is none (X509-SVID §2: exactly one)."""
    for m in _URI_SAN.finditer(cert_der):
        length = m.group(1)[0]
        start = m.start(2)
        value = cert_der[start : start + length]
        try:
            return value.decode("ascii")
        except UnicodeDecodeError:
            continue
    return ""


_TENANT_PATH = re.compile(r"^spiffe://[^/]+/nops/tenant/([^/]+)(?:/|$)")


def tenant_of(spiffe_id: str) -> Optional[str]:
    """The tenant of an agent SPIFFE ID (spiffe://<td>/nops/tenant/<tenant>/...), the kernel's rule."""
    m = _TENANT_PATH.match(spiffe_id)
    return m.group(1) if m else None


_AGENT_PATH = re.compile(r"^spiffe://[^/]+/nops/tenant/[^/]+/agent/([^/]+)$")


def agent_name_of(spiffe_id: str) -> Optional[str]:
    """The agent name of an agent SPIFFE ID (spiffe://<td>/nops/tenant/<tenant>/agent/<name>)."""
    m = _AGENT_PATH.match(spiffe_id)
    return m.group(1) if m else None


def trust_domain_of(spiffe_id: str) -> str:
    """The trust domain of a SPIFFE ID ("" when it is not one)."""
    m = re.match(r"^spiffe://([^/]+)", spiffe_id)
    return m.group(1) if m else ""
