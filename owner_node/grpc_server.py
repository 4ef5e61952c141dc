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

import grpc

from owner_node.config import OwnerConfig
from owner_node.service import OwnerService
from owner_node.validation import RequestRefused
from shared.rpc import owner_pb2, owner_pb2_grpc
from shared.rpc.channel import MAX_MESSAGE_BYTES
from shared.rpc.errors import ERROR_CODE_KEY, STATUS_FOR_CODE

log = logging.getLogger("owner_node")


class OwnerServicer(owner_pb2_grpc.OwnerServicer):
    def __init__(self, service: OwnerService):
        self.service = service

    def _answer(self, method: str, request: owner_pb2.Envelope, context: grpc.ServicerContext):
        try:
            return owner_pb2.Envelope(dpdm=self.service.answer(request.dpdm, method))
        except RequestRefused as exc:
            log.info("refused %s from %s: %s (%s)", method, context.peer(), exc, exc.code)
            context.set_trailing_metadata(((ERROR_CODE_KEY, exc.code),))
            context.abort(STATUS_FOR_CODE.get(exc.code, grpc.StatusCode.INVALID_ARGUMENT), str(exc))

    def Describe(self, request, context):  # noqa: N802 (names fixed by the .proto)
        return self._answer("Describe", request, context)

    def Release(self, request, context):  # noqa: N802
        return self._answer("Release", request, context)

    def Budget(self, request, context):  # noqa: N802
        return self._answer("Budget", request, context)


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
    owner_pb2_grpc.add_OwnerServicer_to_server(OwnerServicer(service), server)
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
