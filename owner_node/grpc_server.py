"""The owner service as a long-running gRPC process (API: shared/wire/rpc/owner.proto).

It alone opens the private data and the ledger. Every RPC goes through ``OwnerService.answer``,
the same path the in-process simulation uses; a refusal becomes a gRPC error whose details are the
message and whose trailing metadata carries the refusal code. With mutual TLS, every RPC (of either
API version) first checks the caller's certificate names against ``[service] client_names``
(owner_node.peers) and refuses any other caller with ``peer_not_allowed``, logging who it was.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from concurrent import futures
from functools import partial

import grpc

from owner_node.config import OwnerConfig
from owner_node.peers import allowed, certificate_names, peer_identity
from owner_node.service import OwnerService
from owner_node.validation import RequestRefused
from shared.wire.rpc.channel import MAX_MESSAGE_BYTES, RPC_METHODS, SERVICE, V1_SERVICE
from shared.wire.rpc.errors import ERROR_CODE_KEY, STATUS_FOR_CODE

log = logging.getLogger("owner_node")


def _answer(service: OwnerService, method: str, request: bytes, context: grpc.ServicerContext) -> bytes:
    try:
        return service.answer(request, method, peer=peer_identity(context))
    except RequestRefused as exc:
        _refuse(context, method, exc.code, str(exc))


def _refuse(context: grpc.ServicerContext, method: str, code: str, message: str) -> None:
    log.info("refused %s from %s: %s (%s)", method, peer_identity(context), message, code)
    context.set_trailing_metadata(((ERROR_CODE_KEY, code),))
    context.abort(STATUS_FOR_CODE.get(code, grpc.StatusCode.INVALID_ARGUMENT), message)


def _refuse_v1(method: str, request: bytes, context: grpc.ServicerContext) -> bytes:
    _refuse(
        context,
        method,
        "old_wire_format",
        f"{V1_SERVICE}/{method} is dpdistill's version 1 API; this owner speaks {SERVICE} (owner.proto v2): "
        "upgrade dpdistill on the distiller",
    )


def _checked(service: OwnerService, method: str, answer: Callable[..., bytes]) -> Callable[..., bytes]:
    """``answer`` behind the peer check: a caller whose certificate is not named in client_names is refused
    (and recorded in the audit trail, so a probe by someone else's relay shows afterwards)."""
    client_names = service.config.service.client_names
    if not client_names:  # plaintext on loopback, or TLS without client certificates
        return answer

    def checked(request: bytes, context: grpc.ServicerContext) -> bytes:
        if not allowed(context, client_names):
            who = peer_identity(context)
            log.warning("peer not allowed: %s called %s", who, method)
            detail = f"certificate names {certificate_names(context)} not in [service] client_names"
            service.audit(who, method, None, "peer_not_allowed", detail, kind="not_decoded")
            _refuse(
                context,
                method,
                "peer_not_allowed",
                "this owner service answers only the client certificates named in its [service] client_names; "
                f"yours names {certificate_names(context)}",
            )
        return answer(request, context)

    return checked


def handlers(service: OwnerService) -> list[grpc.GenericRpcHandler]:
    """The Owner service of owner.proto, taking and giving the serialised ``Message`` bytes as they are
    (the owner's own decoder checks them), and version 1's service refusing every call by name; both
    behind the peer check of ``[service] client_names``."""
    return [
        grpc.method_handlers_generic_handler(
            SERVICE,
            {
                m: grpc.unary_unary_rpc_method_handler(_checked(service, m, partial(_answer, service, m)))
                for m in RPC_METHODS
            },
        ),
        grpc.method_handlers_generic_handler(
            V1_SERVICE,
            {m: grpc.unary_unary_rpc_method_handler(_checked(service, m, partial(_refuse_v1, m))) for m in RPC_METHODS},
        ),
    ]


def start_server(service: OwnerService) -> tuple[grpc.Server, int]:
    """Start serving ``service`` where its config says; returns the server and the bound port."""
    svc = service.config.service
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=svc.max_workers, thread_name_prefix="owner-rpc"),
        options=[
            ("grpc.max_receive_message_length", service.validator.max_request_bytes()),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ],
    )
    server.add_generic_rpc_handlers(handlers(service))
    if svc.tls_cert is None:
        port = server.add_insecure_port(svc.listen)
    else:
        creds = grpc.ssl_server_credentials(
            [(svc.tls_key.read_bytes(), svc.tls_cert.read_bytes())],
            root_certificates=svc.client_ca.read_bytes() if svc.client_ca else None,
            require_client_auth=svc.client_ca is not None,
        )
        port = server.add_secure_port(svc.listen, creds)
    if port == 0:
        raise RuntimeError(f"the owner service could not listen on {svc.listen} (address in use?)")
    server.start()
    return server, port


def serve(config: OwnerConfig) -> None:
    """Run until SIGTERM or SIGINT; replies already recorded stay valid across restarts."""
    service = OwnerService(config)
    server, port = start_server(service)
    svc = config.service
    mode = (
        f"mutual TLS, answering {', '.join(svc.client_names)}"
        if svc.client_ca
        else "TLS"
        if svc.tls_cert
        else "plaintext (loopback)"
    )
    host = config.service.listen.rsplit(":", 1)[0]
    print(
        f"owner service '{config.owner_id}' listening on {host}:{port} ({mode}); ledger {config.ledger_path}",
        flush=True,
    )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    print("owner service stopping", flush=True)
    server.stop(grace=10).wait()
    service.close()
