"""A client channel to an owner service: plain on a loopback address, TLS (optionally mutual) otherwise.

Imports only grpc and the generated stubs, so the Flower relay at the hospital can use it without
torch, numpy or any access to the data.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc

from shared.wire.rpc import owner_pb2
from shared.wire.rpc.address import is_loopback
from shared.wire.rpc.errors import OwnerCallError, error_from_rpc

# The service and its RPCs as owner.proto defines them; every call carries one serialised Message.
SERVICE = owner_pb2.DESCRIPTOR.services_by_name["Owner"].full_name
RPC_METHODS = tuple(m.name for m in owner_pb2.DESCRIPTOR.services_by_name["Owner"].methods)
V1_SERVICE = "dpdistill.owner.v1.Owner"  # version 1 (JSON + npz inside an Envelope): refused by name
MAX_MESSAGE_BYTES = 256 * 1024 * 1024


def _read(path: str | None, what: str) -> bytes | None:
    """The file's bytes; a file this user cannot read is ``relay_misconfigured``, naming it and the uid."""
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise OwnerCallError(
            "relay_misconfigured", f"cannot read the {what} {path} as uid {os.geteuid()}: {exc.strerror or exc}"
        ) from None


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

    def tls_files(self) -> tuple[bytes | None, bytes | None, bytes | None]:
        """(CA, client key, client certificate) as bytes, each checked to be a usable PEM.

        Any fault (missing, unreadable, not PEM, key not matching the certificate) is
        ``OwnerCallError("relay_misconfigured")`` naming the file, raised before any connection, so it
        is reported as what it is rather than as an owner that cannot be reached.
        """
        files = (
            _read(self.root_cert, "CA certificate of the owner service"),
            _read(self.client_key, "relay key"),
            _read(self.client_cert, "relay certificate"),
        )
        if self.root_cert is not None:
            self.tls_context()
        return files

    def tls_context(self) -> ssl.SSLContext:
        """A client TLS context with this endpoint's CA and client certificate (used to check and to probe)."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        try:
            context.load_verify_locations(cadata=_read(self.root_cert, "CA certificate of the owner service").decode())
        except (ssl.SSLError, UnicodeDecodeError, ValueError) as exc:
            raise OwnerCallError(
                "relay_misconfigured",
                f"the CA certificate of the owner service {self.root_cert} is not a PEM certificate: {exc}",
            ) from None
        if self.client_cert is not None:
            _read(self.client_cert, "relay certificate")
            _read(self.client_key, "relay key")
            try:
                context.load_cert_chain(self.client_cert, self.client_key)
            except (ssl.SSLError, OSError) as exc:
                raise OwnerCallError(
                    "relay_misconfigured",
                    f"the relay certificate {self.client_cert} and key {self.client_key} do not work together: {exc}",
                ) from None
        return context


class OwnerChannel:
    """Calls to one owner service. Building it reads and checks the TLS files (``relay_misconfigured``)."""

    def __init__(self, endpoint: OwnerEndpoint, timeout_s: float = 3600.0):
        self.endpoint = endpoint
        options = [
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ]
        if endpoint.root_cert is None:
            self._channel = grpc.insecure_channel(endpoint.address, options=options)
        else:
            root, key, chain = endpoint.tls_files()
            creds = grpc.ssl_channel_credentials(root_certificates=root, private_key=key, certificate_chain=chain)
            self._channel = grpc.secure_channel(endpoint.address, creds, options=options)
        # The bytes go out and come back as they are: they already are serialised Messages, and the
        # relay forwarding them needs neither to parse them nor to know their kinds.
        self._calls = {m: self._channel.unary_unary(f"/{SERVICE}/{m}") for m in RPC_METHODS}
        self.timeout_s = timeout_s

    def _rpc(self, method: str) -> grpc.UnaryUnaryMultiCallable:
        if method not in RPC_METHODS:
            raise OwnerCallError("wrong_method", f"unknown owner RPC {method!r}; expected one of {RPC_METHODS}")
        return self._calls[method]

    def call(self, method: str, body: bytes) -> bytes:
        """Send one serialised Message to the named RPC; raise ``OwnerCallError`` if no answer comes back.

        gRPC reports a TLS handshake the owner refused as it reports an owner that is down
        (``UNAVAILABLE``); such a failure is looked into (``shared.wire.rpc.tls_probe``) so that a
        certificate problem comes back as ``unauthenticated``, which is not retried.
        """
        rpc = self._rpc(method)
        try:
            return rpc(body, timeout=self.timeout_s)
        except grpc.RpcError as exc:
            error = error_from_rpc(exc)
        if error.code == "owner_unavailable" and self.endpoint.root_cert is not None:
            from shared.wire.rpc import tls_probe  # only on this failure path

            error = tls_probe.diagnose(self.endpoint, error)
        raise error

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
