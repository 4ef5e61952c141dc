"""The owner service as a long-running gRPC process (API: shared/rpc/owner.proto).

It alone opens the private data and the ledger. Every RPC goes through ``OwnerService.answer``,
the same path the in-process simulation uses; a refusal becomes a gRPC error whose details are the
message and whose trailing metadata carries the refusal code.
"""

from __future__ import annotations

import logging
import signal
import threading
from concurrent import futures
from functools import partial

import grpc

from owner_node.config import OwnerConfig
from owner_node.service import OwnerService
from owner_node.validation import RequestRefused
from shared.rpc.channel import MAX_MESSAGE_BYTES, METHODS, SERVICE, V1_SERVICE
from shared.rpc.errors import ERROR_CODE_KEY, STATUS_FOR_CODE

log = logging.getLogger("owner_node")


def peer_of(context: grpc.ServicerContext) -> str:
    """Who sent a call, for the audit trail: the client certificate's names (mutual TLS) and the address."""
    auth = context.auth_context() or {}
    names = [v.decode(errors="replace") for v in auth.get("x509_common_name", ())]
    names += [v.decode(errors="replace") for v in auth.get("x509_subject_alternative_name", ()) if v]
    who = ",".join(dict.fromkeys(names))
    return f"{who} at {context.peer()}" if who else str(context.peer())


def _answer(service: OwnerService, method: str, request: bytes, context: grpc.ServicerContext) -> bytes:
    try:
        return service.answer(request, method, peer=peer_of(context))
    except RequestRefused as exc:
        _refuse(context, method, exc.code, str(exc))


def _refuse(context: grpc.ServicerContext, method: str, code: str, message: str) -> None:
    log.info("refused %s from %s: %s (%s)", method, context.peer(), message, code)
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


def handlers(service: OwnerService) -> list[grpc.GenericRpcHandler]:
    """The Owner service of owner.proto, taking and giving the serialised ``Message`` bytes as they are
    (the owner's own decoder checks them), and version 1's service refusing every call by name."""
    return [
        grpc.method_handlers_generic_handler(
            SERVICE, {m: grpc.unary_unary_rpc_method_handler(partial(_answer, service, m)) for m in METHODS}
        ),
        grpc.method_handlers_generic_handler(
            V1_SERVICE, {m: grpc.unary_unary_rpc_method_handler(partial(_refuse_v1, m)) for m in METHODS}
        ),
    ]


def start_server(service: OwnerService) -> tuple[grpc.Server, int]:
    """Start serving ``service`` where its config says; returns the server and the bound port."""
    svc = service.config.service
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=svc.max_workers, thread_name_prefix="owner-rpc"),
        options=[
            ("grpc.max_receive_message_length", service.config.limits.max_message_bytes),
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
    mode = "mutual TLS" if config.service.client_ca else "TLS" if config.service.tls_cert else "plaintext (loopback)"
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
