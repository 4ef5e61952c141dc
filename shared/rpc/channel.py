"""A client channel to an owner service: plain on a loopback address, TLS (optionally mutual) otherwise.

Imports only grpc and the generated stubs, so the Flower relay at the hospital can use it without
torch, numpy or any access to the data.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc

from shared.rpc import owner_pb2, owner_pb2_grpc
from shared.rpc.errors import OwnerCallError, error_from_rpc

METHODS = ("Describe", "Release", "Budget")
MAX_MESSAGE_BYTES = 256 * 1024 * 1024
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]", "::1")


def is_loopback(address: str) -> bool:
    host = address.rsplit(":", 1)[0] if ":" in address else address
    return host in LOOPBACK_HOSTS or host.startswith("127.") or address.startswith("unix:")


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
        self._stub = owner_pb2_grpc.OwnerStub(self._channel)
        self.timeout_s = timeout_s

    def _rpc(self, method: str) -> grpc.UnaryUnaryMultiCallable:
        if method not in METHODS:
            raise OwnerCallError("wrong_method", f"unknown owner RPC {method!r}; expected one of {METHODS}")
        return getattr(self._stub, method)

    def call(self, method: str, body: bytes) -> bytes:
        """Send one DPDM message to the named RPC; raise ``OwnerCallError`` if no answer comes back."""
        rpc = self._rpc(method)
        try:
            reply = rpc(owner_pb2.Envelope(dpdm=body), timeout=self.timeout_s)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from None
        return reply.dpdm

    def start(self, method: str, body: bytes) -> grpc.Future:
        """Send without waiting: the caller may ``cancel()`` the call (the owner still records its reply)."""
        return self._rpc(method).future(owner_pb2.Envelope(dpdm=body), timeout=self.timeout_s)

    def wait_ready(self, timeout_s: float) -> None:
        try:
            grpc.channel_ready_future(self._channel).result(timeout=timeout_s)
        except grpc.FutureTimeoutError as exc:
            raise OwnerCallError("owner_unavailable", f"no owner service answered within {timeout_s} s") from exc

    def close(self) -> None:
        self._channel.close()
