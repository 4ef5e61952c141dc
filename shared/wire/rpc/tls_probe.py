"""Why a TLS connection to an owner service failed: the owner down, or a certificate refused.

gRPC gives the same ``UNAVAILABLE`` status ("failed to connect to all addresses ... Socket closed")
whether the owner service is not running or it refused the relay's certificate during the TLS
handshake (gRPC's TLS library closes the connection without an alert). The first is worth
retrying (the owner may be restarting; a release is idempotent by request id); the second never
heals by itself and must be reported at once. So after such a failure the relay makes one TLS
connection of its own with the same CA, certificate and key, and looks at what happens:

* no TCP connection: the owner is down or unreachable (the original, retryable error);
* the owner's certificate does not verify against owner-ca, or does not name the host: ``unauthenticated``;
* the server does not speak TLS: ``unauthenticated``;
* the handshake completes and the server closes the connection (or sends a TLS alert) before it
  sends anything: it refused the relay's certificate, ``unauthenticated``;
* the server sends its first HTTP/2 frame, or waits: TLS is fine, the original error stands.

Standard library only (``ssl``, ``socket``); the relay imports it without torch or the data.
"""

from __future__ import annotations

import socket
import ssl
from typing import TYPE_CHECKING

from shared.wire.rpc.address import split_address
from shared.wire.rpc.errors import OwnerCallError

if TYPE_CHECKING:
    from shared.wire.rpc.channel import OwnerEndpoint

PROBE_TIMEOUT_S = 5.0


def diagnose(endpoint: OwnerEndpoint, error: OwnerCallError, timeout_s: float = PROBE_TIMEOUT_S) -> OwnerCallError:
    """``error`` itself when the owner is merely unreachable, else an ``unauthenticated`` error saying why."""
    where = split_address(endpoint.address)
    if where is None:
        return error
    host, port = where
    try:
        context = endpoint.tls_context()
    except OwnerCallError as exc:
        return exc
    context.set_alpn_protocols(["h2"])
    try:
        raw = socket.create_connection((host, port), timeout=timeout_s)
    except OSError:
        return error
    with raw:
        try:
            tls = context.wrap_socket(raw, server_hostname=host)
        except ssl.SSLCertVerificationError as exc:
            return OwnerCallError(
                "unauthenticated",
                f"the owner service at {endpoint.address} presented a certificate that the CA certificate "
                f"{endpoint.root_cert} does not vouch for ({exc.verify_message}); check OWNER_CA and OWNER_ADDRESS",
            )
        except ssl.SSLError as exc:
            if exc.reason == "WRONG_VERSION_NUMBER":
                return OwnerCallError(
                    "unauthenticated", f"the service at {endpoint.address} does not speak TLS; check OWNER_ADDRESS"
                )
            return error
        except OSError:
            return error
        with tls:
            tls.settimeout(timeout_s)
            try:
                if tls.recv(1):
                    return error  # the server's HTTP/2 settings: it accepted this certificate
                refusal = "closed the connection"
            except TimeoutError:
                return error
            except ssl.SSLError as exc:
                refusal = f"ended the connection with TLS alert {exc.reason}"
            except OSError:
                return error
    if endpoint.client_cert is None:
        what = "the relay presented no certificate and this owner service requires one (set RELAY_CERT and RELAY_KEY)"
    else:
        what = (
            f"it does not accept the relay certificate {endpoint.client_cert} (signed by a CA other than "
            "its [service] client_ca, expired, or not for client authentication)"
        )
    return OwnerCallError(
        "unauthenticated", f"the owner service at {endpoint.address} {refusal} after the TLS handshake: {what}"
    )
