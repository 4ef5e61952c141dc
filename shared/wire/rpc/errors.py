"""Refusal codes and how they travel over gRPC; shared by the owner service, relay and distiller.

This module imports only grpc, so the Flower relay can use it without torch or the data.
"""

from __future__ import annotations

import grpc

ERROR_CODE_KEY = "dpdistill-error-code"

# The owner's refusal codes (owner_node/service.py) and the gRPC status each travels as.
STATUS_FOR_CODE: dict[str, grpc.StatusCode] = {
    "bad_message": grpc.StatusCode.INVALID_ARGUMENT,
    "old_wire_format": grpc.StatusCode.FAILED_PRECONDITION,
    "wrong_method": grpc.StatusCode.INVALID_ARGUMENT,
    "invalid_request": grpc.StatusCode.INVALID_ARGUMENT,
    "unsupported_network": grpc.StatusCode.INVALID_ARGUMENT,
    "too_many_draws": grpc.StatusCode.INVALID_ARGUMENT,
    "sample_rate_too_high": grpc.StatusCode.INVALID_ARGUMENT,
    "noise_too_low": grpc.StatusCode.INVALID_ARGUMENT,
    "unknown_aux": grpc.StatusCode.FAILED_PRECONDITION,
    "unsupported": grpc.StatusCode.UNIMPLEMENTED,
    "id_conflict": grpc.StatusCode.ALREADY_EXISTS,
    "budget_exceeded": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "internal_error": grpc.StatusCode.INTERNAL,
    "too_large": grpc.StatusCode.INVALID_ARGUMENT,
    "accounting_failed": grpc.StatusCode.FAILED_PRECONDITION,
    "owner_busy": grpc.StatusCode.ABORTED,
    # The client certificate verified but is not one [service] client_names lists (owner_node.peers).
    "peer_not_allowed": grpc.StatusCode.PERMISSION_DENIED,
}

# Failures of the path to the owner rather than refusals by it: safe to retry, because a release
# is idempotent by request id (the owner answers a repeated id from its ledger without spending).
# Everything else is reported at once, notably the deployment faults that never heal by waiting:
# ``relay_misconfigured`` (the relay's settings or TLS files), ``unauthenticated`` (a certificate
# refused, either way), ``peer_not_allowed`` and ``relay_failed`` (Flower could not run the relay).
RETRYABLE_CODES = frozenset({"owner_unavailable", "node_unavailable", "timeout", "owner_busy"})


class OwnerCallError(RuntimeError):
    """A call that did not produce an answer: a refusal by the owner or a failure on the way."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    @property
    def retryable(self) -> bool:
        return self.code in RETRYABLE_CODES


def error_from_rpc(exc: grpc.RpcError) -> OwnerCallError:
    """Turn a gRPC failure into the owner's refusal code, or a transport code when the owner never answered."""
    status = exc.code()
    details = exc.details() or ""
    code = dict(exc.trailing_metadata() or ()).get(ERROR_CODE_KEY)
    if code:
        return OwnerCallError(code, details)
    if status == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return OwnerCallError("message_too_large", details)
    if status == grpc.StatusCode.UNAVAILABLE:
        return OwnerCallError("owner_unavailable", details)
    if status == grpc.StatusCode.DEADLINE_EXCEEDED:
        return OwnerCallError("timeout", details)
    if status == grpc.StatusCode.UNAUTHENTICATED:
        return OwnerCallError("unauthenticated", details)
    return OwnerCallError("rpc_failed", f"{status.name}: {details}")
