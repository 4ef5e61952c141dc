"""The distiller's view of an owner: typed calls over any transport, retried when the path fails.

A transport takes an RPC name (``Describe``, ``Release``, ``Budget``) and a serialised ``Message``
(both defined in shared/wire/rpc/owner.proto) and returns the reply bytes, or raises ``OwnerCallError``.
The in-process simulation, a direct gRPC channel and the Flower relay are all transports, so the
pipeline has one code path. Retrying is safe because a release is idempotent by request id: the
owner answers a repeated id from its ledger without spending again.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from shared.compute.signals import get_signal_kind
from shared.wire.messages import (
    BudgetReport,
    BudgetRequest,
    DescribeRequest,
    ErrorReply,
    FeatureReply,
    FeatureRequest,
    KipStepReply,
    KipStepRequest,
    OwnerInfo,
    PlanReply,
    PlanRequest,
)
from shared.wire.protocol import decode, encode
from shared.wire.rpc.errors import OwnerCallError

Transport = Callable[[str, bytes], bytes]


class OwnerRefused(RuntimeError):
    """The owner refused a request; ``code`` says why (e.g. ``budget_exceeded``)."""

    def __init__(self, code: str, message: str):
        super().__init__(f"owner refused ({code}): {message}")
        self.code = code


class OwnerUnreachable(RuntimeError):
    """The owner could not be reached within the retry window; run the same command again to resume."""


class OwnerClient:
    def __init__(self, transport: Transport, name: str = "owner", retry_window_s: float = 900.0, log=print):
        self.transport = transport
        self.name = name
        self.retry_window_s = retry_window_s
        self.log = log

    def _send(self, method: str, body: bytes) -> bytes:
        deadline = time.monotonic() + self.retry_window_s
        delay = 1.0
        while True:
            try:
                raw = self.transport(method, body)
            except OwnerCallError as exc:
                if not exc.retryable:
                    raise OwnerRefused(exc.code, exc.message) from None
                if time.monotonic() + delay > deadline:
                    raise OwnerUnreachable(
                        f"owner '{self.name}' unreachable for {self.retry_window_s:.0f} s ({exc}); "
                        "run the same command again to resume"
                    ) from None
                self.log(f"[{self.name}] {exc.code}: {exc.message}; retrying in {delay:.0f} s")
                time.sleep(delay)
                delay = min(2 * delay, 30.0)
                continue
            reply = decode(raw)
            if isinstance(reply, ErrorReply):
                raise OwnerRefused(reply.code, reply.message)
            return raw

    def _call(self, method: str, message, expected: type):
        reply = decode(self._send(method, encode(message)))
        if not isinstance(reply, expected):
            raise RuntimeError(f"owner answered {reply.kind}, expected {expected.kind}")
        return reply

    def describe(self) -> OwnerInfo:
        return self._call("Describe", DescribeRequest(), OwnerInfo)

    def budget(self) -> BudgetReport:
        return self._call("Budget", BudgetRequest(), BudgetReport)

    def reserve(self, request: PlanRequest) -> PlanReply:
        """Ask the owner to accept a whole run before its first release (idempotent by plan id)."""
        reply = self._call("Release", request, PlanReply)
        if reply.plan_id != request.plan_id or reply.event.count != request.total_releases:
            raise RuntimeError("owner answered with something other than the acceptance of this plan")
        return reply

    def release(self, request: FeatureRequest) -> tuple[FeatureReply, bytes]:
        """The decoded reply and its exact bytes (stored as received)."""
        raw = self._send("Release", encode(request))
        reply = decode(raw)
        if not isinstance(reply, FeatureReply) or reply.request_id != request.request_id:
            raise RuntimeError("owner answered with something other than the reply to this request")
        dim = get_signal_kind(request.signal).released_dim(request.network, request.subspace_dim)
        if reply.noisy_sums.shape[0] != request.num_draws or reply.noisy_sums.shape[2] != dim:
            raise RuntimeError("owner's reply has the wrong shape for this request")
        return reply, raw

    def kip_steps(self, request: KipStepRequest) -> tuple[KipStepReply, bytes]:
        """Synchronised DP-KIP: the decoded reply (set and moments after the steps) and its exact bytes."""
        raw = self._send("Release", encode(request))
        reply = decode(raw)
        if not isinstance(reply, KipStepReply) or reply.request_id != request.request_id:
            raise RuntimeError("owner answered with something other than the reply to this request")
        if reply.images.shape != request.images.shape or reply.step != request.step + request.num_steps:
            raise RuntimeError("owner's reply has the wrong shape or step count for this request")
        return reply, raw
