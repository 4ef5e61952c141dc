"""Who is calling the owner service, and whether the owner accepts them.

With mutual TLS, gRPC has already checked that the caller's certificate chains to ``[service]
client_ca``. That says which CA vouches for the caller, not which caller it is: a CA that signs more
than one client (a hospital's own PKI, or a deployment CA shared by several hospitals) would let any
of them in. So the service also checks the certificate's names against ``[service] client_names``
(the subject common name or a DNS subject alternative name must be listed) before any RPC is
answered, and refuses everyone else with ``peer_not_allowed``.

``peer_identity`` is the caller as the owner should record it (logs, audit trail).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable

import grpc

COMMON_NAME = "x509_common_name"
SAN = "x509_subject_alternative_name"


def _texts(values: Iterable[bytes]) -> list[str]:
    return [unicodedata.normalize("NFC", v.decode("utf-8", errors="replace")) for v in values]


def peer_names(context: grpc.ServicerContext) -> tuple[str, ...]:
    """The names in the caller's verified client certificate (common names, then SANs); () without one."""
    auth = context.auth_context()
    return tuple(dict.fromkeys(_texts(auth.get(COMMON_NAME, ())) + _texts(auth.get(SAN, ()))))


def certificate_names(context: grpc.ServicerContext) -> str:
    """The caller's verified certificate names as one escaped line: ``"CN=relay-a SAN=relay-a"``."""
    auth = context.auth_context()
    parts = [f"CN={name}" for name in _texts(auth.get(COMMON_NAME, ()))]
    parts += [f"SAN={name}" for name in _texts(auth.get(SAN, ()))]
    return _escaped(" ".join(parts) if parts else "no client certificate")


def peer_identity(context: grpc.ServicerContext) -> str:
    """The caller as one line for logs and audit records: its certificate's names and its address.

    ``"CN=relay-a SAN=relay-a from ipv4:10.0.0.7:51234"``, or ``"no client certificate from ..."``.
    Only names from a certificate gRPC has verified against ``client_ca`` appear here; every
    character outside printable ASCII is escaped, so a name cannot forge a line of the log.
    """
    return f"{certificate_names(context)} from {_escaped(context.peer())}"


def _escaped(text: str) -> str:
    return text.encode("unicode_escape").decode("ascii")


def allowed(context: grpc.ServicerContext, client_names: Iterable[str]) -> bool:
    """Whether one of the caller's certificate names is in ``client_names`` (exact, after NFC)."""
    accepted = {unicodedata.normalize("NFC", name) for name in client_names}
    return any(name in accepted for name in peer_names(context))
