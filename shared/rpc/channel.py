"""A client channel to an owner service: plain on a loopback address, TLS (optionally mutual) otherwise.

Imports only grpc and the generated stubs, so the Flower relay at the hospital can use it without
torch, numpy or any access to the data.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

import grpc

from shared.rpc import owner_pb2
from shared.rpc.errors import OwnerCallError, error_from_rpc

# The service and its RPCs as owner.proto defines them; every call carries one serialised Message.
SERVICE = owner_pb2.DESCRIPTOR.services_by_name["Owner"].full_name
METHODS = tuple(m.name for m in owner_pb2.DESCRIPTOR.services_by_name["Owner"].methods)
V1_SERVICE = "dpdistill.owner.v1.Owner"  # version 1 (JSON + npz inside an Envelope): refused by name
MAX_MESSAGE_BYTES = 256 * 1024 * 1024


def _valid_port(port: str) -> bool:
    return port.isascii() and port.isdigit() and int(port) <= 65535


def _split_host(address: str) -> tuple[str, bool] | None:
    """``(host, is_bracketed)`` of ``host``, ``host:port``, ``[v6]``, ``[v6]:port`` or a bare IPv6 literal."""
    if address.startswith("["):
        end = address.find("]")
        if end < 0:
            return None
        rest = address[end + 1 :]
        if rest and not (rest.startswith(":") and _valid_port(rest[1:])):
            return None
        return address[1:end], True
    if address.count(":") == 1:
        host, port = address.split(":")
        return (host, False) if _valid_port(port) else None
    return address, False  # no port, or a bare IPv6 literal such as ``::1``


def is_loopback(address: str) -> bool:
    """Whether ``address`` can only reach this machine, so plaintext is acceptable there.

    Only literals count: an IPv4 address in 127.0.0.0/8, ::1 (or an IPv4-mapped 127/8), the name
    ``localhost``, or a ``unix:`` socket. Any other host name (``127.evil.example``) is resolved by DNS
    and could point anywhere, and a malformed literal (``127.1``, ``127.0.0.256``) is refused: such
    addresses need TLS.
    """
    if address.startswith("unix:"):
        return True
    split = _split_host(address)
    if split is None:
        return False
    host, bracketed = split
    if not bracketed and host.lower() == "localhost":
        return True
    try:
        ip = ipaddress.IPv6Address(host) if bracketed else ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback


def _read(path: str | Path | None) -> bytes | None:
    return Path(path).read_bytes() if path else None


@dataclass(frozen=True)
class OwnerEndpoint:
    """Where an owner service listens and how to trust it."""

    address: str
    root_cert: str | None = None  # PEM of the CA that signed the service's certificate; None = plaintext
    client_cert: str | None = None  # for mutual TLS
    client_key: str | None = None

    def __post_init__(self) -> None:
        if self.root_cert is None and not is_loopback(self.address):
            raise ValueError(
                f"owner address {self.address} is not a loopback address: give the CA certificate to use TLS"
            )
        if (self.client_cert is None) != (self.client_key is None):
            raise ValueError("mutual TLS needs both a client certificate and its key")


class OwnerChannel:
    def __init__(self, endpoint: OwnerEndpoint, timeout_s: float = 3600.0):
        options = [
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ]
        if endpoint.root_cert is None:
            self._channel = grpc.insecure_channel(endpoint.address, options=options)
        else:
            creds = grpc.ssl_channel_credentials(
                root_certificates=_read(endpoint.root_cert),
                private_key=_read(endpoint.client_key),
                certificate_chain=_read(endpoint.client_cert),
            )
            self._channel = grpc.secure_channel(endpoint.address, creds, options=options)
        # The bytes go out and come back as they are: they already are serialised Messages, and the
        # relay forwarding them needs neither to parse them nor to know their kinds.
        self._calls = {m: self._channel.unary_unary(f"/{SERVICE}/{m}") for m in METHODS}
        self.timeout_s = timeout_s

    def _rpc(self, method: str) -> grpc.UnaryUnaryMultiCallable:
        if method not in METHODS:
            raise OwnerCallError("wrong_method", f"unknown owner RPC {method!r}; expected one of {METHODS}")
        return self._calls[method]

    def call(self, method: str, body: bytes) -> bytes:
        """Send one serialised Message to the named RPC; raise ``OwnerCallError`` if no answer comes back."""
        rpc = self._rpc(method)
        try:
            return rpc(body, timeout=self.timeout_s)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from None

    def start(self, method: str, body: bytes) -> grpc.Future:
        """Send without waiting: the caller may ``cancel()`` the call (the owner still records its reply)."""
        return self._rpc(method).future(body, timeout=self.timeout_s)

    def wait_ready(self, timeout_s: float) -> None:
        try:
            grpc.channel_ready_future(self._channel).result(timeout=timeout_s)
        except grpc.FutureTimeoutError as exc:
            raise OwnerCallError("owner_unavailable", f"no owner service answered within {timeout_s} s") from exc

    def close(self) -> None:
        self._channel.close()
