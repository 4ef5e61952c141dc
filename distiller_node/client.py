"""The distiller's view of an owner: typed calls over any bytes-in/bytes-out transport."""

from __future__ import annotations

from collections.abc import Callable

from shared.protocol import (
    BudgetReport,
    BudgetRequest,
    DescribeRequest,
    ErrorReply,
    FeatureReply,
    FeatureRequest,
    OwnerInfo,
    decode,
    encode,
)

Transport = Callable[[bytes], bytes]


class OwnerRefused(RuntimeError):
    """The owner refused a request; ``code`` says why (e.g. ``budget_exceeded``)."""

    def __init__(self, code: str, message: str):
        super().__init__(f"owner refused ({code}): {message}")
        self.code = code


class OwnerClient:
    def __init__(self, transport: Transport):
        self.transport = transport

    def _call(self, message, expected: type):
        reply = decode(self.transport(encode(message)))
        if isinstance(reply, ErrorReply):
            raise OwnerRefused(reply.code, reply.message)
        if not isinstance(reply, expected):
            raise RuntimeError(f"owner answered {reply.kind}, expected {expected.kind}")
        return reply

    def describe(self) -> OwnerInfo:
        return self._call(DescribeRequest(), OwnerInfo)

    def budget(self) -> BudgetReport:
        return self._call(BudgetRequest(), BudgetReport)

    def release(self, request: FeatureRequest) -> tuple[FeatureReply, bytes]:
        """The decoded reply and its exact bytes (stored as received)."""
        raw = self.transport(encode(request))
        reply = decode(raw)
        if isinstance(reply, ErrorReply):
            raise OwnerRefused(reply.code, reply.message)
        if not isinstance(reply, FeatureReply) or reply.request_id != request.request_id:
            raise RuntimeError("owner answered with something other than the reply to this request")
        if reply.noisy_sums.shape[0] != request.num_draws or reply.noisy_sums.shape[2] != request.subspace_dim:
            raise RuntimeError("owner's reply has the wrong shape for this request")
        return reply, raw
