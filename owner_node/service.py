"""The owner's front door: validates, counts and answers requests; its limits are its own config.

``handle`` takes and returns bytes, so the in-process simulation and any network transport use the
same path. Every refusal is an ``ErrorReply`` with a machine-readable code and a clear message, and
spends nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
from typing import Any

from owner_node.budget import AccountingRefused, Budget, BudgetExceeded
from owner_node.class_counts import published_counts
from owner_node.config import OwnerConfig, check_delta_for_records
from owner_node.data import PrivateData, load_auxiliary, load_private_data, normalization_for
from owner_node.kip_mechanism import KipStepMechanism
from owner_node.ledger import Ledger, LedgerBusy, LedgerConflict
from owner_node.load_summary import write_load_summary
from owner_node.mechanism import FeatureMechanism
from owner_node.validation import REQUEST_ID, RequestRefused, RequestValidator
from shared.compute.device import use_device
from shared.compute.subspace import content_hash
from shared.datasets import to_float
from shared.images.classes import check_same_classes
from shared.images.image_set import ImageSet
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
from shared.wire.privacy_event import SampledGaussianEvent
from shared.wire.protocol import ProtocolError, decode, encode
from shared.wire.rpc.errors import OwnerCallError

log = logging.getLogger("owner_node")
# Which message kinds each RPC of shared/wire/rpc/owner.proto accepts.
# Marks digests of owner.proto v2 encodings; the ledger's older rows hold bare sha256 digests of
# version 1's bytes, which no v2 request can match.
DIGEST_PREFIX = "v2:"


def request_digest(request: Any) -> str:
    """What the ledger keeps to recognise a retry: a hash of the request's deterministic encoding."""
    return DIGEST_PREFIX + hashlib.sha256(encode(request)).hexdigest()


def _conflict(exc: LedgerConflict) -> RequestRefused:
    if exc.stored_digest is not None and not exc.stored_digest.startswith(DIGEST_PREFIX):
        return RequestRefused(
            "old_wire_format",
            f"{exc}: the ledger holds it from dpdistill's version 1 wire format, whose replies this owner "
            "cannot re-send; the budget it spent stays counted. Start a new run (new request and plan ids).",
        )
    return RequestRefused("id_conflict", str(exc))


KINDS_FOR_METHOD: dict[str, tuple[type, ...]] = {
    "Describe": (DescribeRequest,),
    "Release": (FeatureRequest, KipStepRequest, PlanRequest),
    "Budget": (BudgetRequest,),
}


class OwnerService:
    def __init__(self, config: OwnerConfig, data: PrivateData | None = None, aux: ImageSet | None = None):
        self.config = config
        aux = aux if aux is not None else load_auxiliary(config)
        self.normalization = data.normalization if data is not None else normalization_for(config, aux)
        self.data = data if data is not None else load_private_data(config, self.normalization)
        if tuple(aux.images.shape[1:]) != self.data.image_shape:
            raise ValueError(
                f"auxiliary images {tuple(aux.images.shape[1:])} differ from private {self.data.image_shape}: "
                "both must have the configured image_size and channels"
            )
        # Labels are indices into the class names: a public set whose names differ (or come in
        # another order) would silently permute every label.
        check_same_classes(self.data.class_names, aux.class_names, names=("private set", "auxiliary set"))
        self.aux_hash = content_hash(aux.images)
        device, self.compute = use_device(config.device, config.precision)
        print(f"owner '{config.owner_id}' computes releases with {self.compute}", flush=True)
        self.mechanism = FeatureMechanism(
            self.data,
            to_float(aux.images, self.normalization),
            config.clip_norm,
            aux.labels,
            config.noise_sampler,
            config.limits.max_activation_mb,
            device,
            config.precision,
        )
        self.kip = KipStepMechanism(self.data, config.clip_norm, config.noise_sampler)
        self.num_aux = len(aux)
        self.validator = RequestValidator(config.limits, self.data, self.num_aux, self.aux_hash)
        # delta must be far below 1 / (records protected): checked now that the records are known.
        records = self.data.num_patients if self.data.patients is not None else len(self.data.labels)
        check_delta_for_records(config.delta, records, config.privacy_unit)
        self.rule = Budget(config)
        self.ledger = Ledger(config.ledger_path, config.ledger_on_network_filesystem)
        try:
            self.ledger.bind_privacy_unit(config.record_unit)  # before any release, class counts included
        except ValueError:
            self.ledger.close()
            raise
        # Before anything is served: with class_counts = "dp" this is a release, recorded in the ledger.
        self.data.public_counts = published_counts(
            config, self.ledger, self.data.labels, len(self.data.class_names), self.data.patients, self.rule
        )
        write_load_summary(config, self.data, self.describe())  # what was loaded, before anything is served
        # A computation (minutes, gigabytes) runs one at a time; a retried request id waits for its twin.
        # Neither lock is held by Describe, Budget, plans or refusals.
        self._compute_slot = threading.Lock()
        self._in_flight: dict[str, list] = {}  # request id -> [lock, holders and waiters]
        self._in_flight_guard = threading.Lock()
        self._committed_cache: tuple[tuple, float] | None = None

    def close(self) -> None:
        self.ledger.close()

    def epsilon_committed(self) -> float | None:
        """Epsilon committed now (enforced accountant), cached while the ledger is unchanged."""
        state = self.ledger.state()
        cached = self._committed_cache
        if cached is not None and cached[0] == state:
            return cached[1]
        try:
            value = self.rule.epsilon(self.ledger.committed())
        except Exception:  # reported as unknown in the audit trail; the refusal paths say why
            log.exception("could not compute the committed epsilon")
            return None
        self._committed_cache = (state, value)
        return value

    # ------------------------------------------------------------ bytes in, bytes out

    def handle(self, message: bytes, progress=None, method: str | None = None, peer: str = "in-process") -> bytes:
        """Answer with reply bytes; a refusal is an encoded ``ErrorReply`` (the in-process transport)."""
        try:
            return self.answer(message, method, progress, peer)
        except RequestRefused as exc:
            return encode(ErrorReply(exc.code, str(exc)))

    def call(self, method: str, message: bytes, peer: str = "in-process") -> bytes:
        """The in-process transport: a refusal raises ``OwnerCallError`` as it would over gRPC."""
        try:
            return self.answer(message, method, peer=peer)
        except RequestRefused as exc:
            raise OwnerCallError(exc.code, str(exc)) from None

    def answer(self, message: bytes, method: str | None = None, progress=None, peer: str = "in-process") -> bytes:
        """Answer with reply bytes or raise ``RequestRefused``; ``method`` (an RPC name) restricts the kind.

        Every call, answered or refused, is appended to the ledger's audit trail with ``peer`` (who sent
        it, as the transport identified them) before the answer leaves.
        """
        seen: list[Any] = [None]
        try:
            reply = self._answer(message, method, progress, lambda r: seen.__setitem__(0, r))
        except RequestRefused as exc:
            self.audit(peer, method, seen[0], exc.code, str(exc))
            raise
        self.audit(peer, method, seen[0], "", "")
        return reply

    def audit(
        self, peer: str, method: str | None, request: Any, code: str, detail: str, kind: str | None = None
    ) -> None:
        """Append one call to the ledger's audit trail (``code`` empty: answered), with the epsilon committed.

        ``kind`` defaults to the request's message kind, or "undecodable" where there is no request.
        """
        kind = kind or getattr(request, "kind", "undecodable")
        request_id = str(getattr(request, "request_id", getattr(request, "plan_id", "")))
        self.ledger.audit(
            peer=peer,
            method=method or "",
            kind=kind,
            request_id=request_id,
            code=code,
            detail=detail,
            epsilon_committed=self.epsilon_committed(),
        )

    def _answer(self, message: bytes, method: str | None, progress, seen) -> bytes:
        try:
            request = decode(message, max_bytes=self.validator.max_request_bytes())
        except ProtocolError as exc:
            raise RequestRefused(exc.code, str(exc)) from exc
        except Exception as exc:  # a decoder bug must still come back as a refusal, not a bare gRPC failure
            log.exception("internal error while decoding a message")
            reason = f"the owner failed to decode the message ({type(exc).__name__})"
            raise RequestRefused("internal_error", reason) from exc
        seen(request)
        if method is not None and not isinstance(request, KINDS_FOR_METHOD.get(method, ())):
            raise RequestRefused("wrong_method", f"the {method} call does not take {request.kind} messages")
        try:
            if isinstance(request, DescribeRequest):
                return encode(self.describe())
            if isinstance(request, BudgetRequest):
                return encode(self.budget())
            if isinstance(request, FeatureRequest):
                return self.release(request, progress)
            if isinstance(request, KipStepRequest):
                return self.kip_steps(request, progress)
            if isinstance(request, PlanRequest):
                return encode(self.plan(request))
            raise RequestRefused("unsupported", f"the owner does not answer {request.kind} messages")
        except RequestRefused:
            raise
        except Exception as exc:  # the owner keeps serving; details stay in the owner's own log
            log.exception("internal error while answering %s", type(request).__name__)
            raise RequestRefused("internal_error", f"the owner failed to answer ({type(exc).__name__})") from exc

    # ------------------------------------------------------------ operations

    def describe(self) -> OwnerInfo:
        return OwnerInfo(
            owner_id=self.config.owner_id,
            class_names=self.data.class_names,
            class_counts=self.data.published_counts,
            image_shape=self.data.image_shape,
            normalization=tuple(self.normalization),
            aux_hash=self.aux_hash,
            clip_norm=self.config.clip_norm,
            limits=self.config.limits.to_dict() | {"epsilon": self.config.epsilon, "delta": self.config.delta},
            epsilon_budget=self.config.epsilon,
            delta=self.config.delta,
            accountant=self.config.accountant,
            noise_sampler=self.config.noise_sampler,
            privacy_unit=self.config.privacy_unit,
        )

    def budget(self) -> BudgetReport:
        try:
            return self.rule.report(self.ledger.events(), self.ledger.outstanding())
        except AccountingRefused as exc:
            raise RequestRefused(exc.code, str(exc)) from exc

    def plan(self, request: PlanRequest) -> PlanReply:
        """Accept or refuse a whole run before its first release, and hold its budget in the ledger.

        The template is validated exactly as the run's first request will be, so a run refused for
        a limit or for the budget is refused here, having spent nothing. The plan's size is bounded
        by the owner's ``max_releases_per_plan`` before the accountant runs.
        """
        for name, value in (("plan_id", request.plan_id), ("request_prefix", request.request_prefix)):
            if not REQUEST_ID.fullmatch(value):
                raise RequestRefused(
                    "invalid_request", f"{name} must be 1-128 characters of letters, digits, '.', '_', ':' or '-'"
                )
        if len(request.request_prefix) < 8:
            raise RequestRefused("invalid_request", "request_prefix must be at least 8 characters (one run's own ids)")
        limit = self.config.limits.max_releases_per_plan
        if not 1 <= request.total_releases <= limit:
            raise RequestRefused(
                "too_large",
                f"total_releases must be in 1..{limit} (the owner's max_releases_per_plan), "
                f"got {request.total_releases}",
            )
        try:
            template = decode(request.template, max_bytes=self.config.limits.max_message_bytes)
        except ProtocolError as exc:
            raise RequestRefused(exc.code, f"the plan's template request: {exc}") from exc
        if isinstance(template, FeatureRequest):
            event = self.validate(template)
        elif isinstance(template, KipStepRequest):
            event = self.validate_kip(template)
        else:
            raise RequestRefused("invalid_request", f"a plan's template must be a release request, not {template.kind}")
        if not template.request_id.startswith(request.request_prefix):
            raise RequestRefused("invalid_request", "the template's request_id must start with the plan's prefix")
        whole = SampledGaussianEvent(event.noise_multiplier, event.sample_rate, request.total_releases)
        digest = request_digest(request)
        with self._refusals_of_reservation(whole, "releases", "plan"):
            self.ledger.reserve_plan(request.plan_id, digest, request.request_prefix, whole, self.rule.check)
        committed = self.epsilon_committed()
        log.info(
            "accepted plan %s: %d releases at sigma=%.4f, q=%.6f",
            request.plan_id,
            whole.count,
            whole.noise_multiplier,
            whole.sample_rate,
        )
        return PlanReply(
            request.plan_id,
            whole,
            committed if committed is not None else 0.0,
            self.config.accountant,
            self.config.delta,
        )

    @contextlib.contextmanager
    def _refusals_of_reservation(self, event: SampledGaussianEvent, unit: str, what: str):
        """What a ledger reservation (of a plan or a release) may raise, as the refusal the caller gets."""
        try:
            yield
        except LedgerConflict as exc:
            raise _conflict(exc) from exc
        except BudgetExceeded as exc:
            raise self._over_budget(exc, event, unit, what) from exc
        except AccountingRefused as exc:
            raise RequestRefused(exc.code, f"{what} {exc}") from exc
        except LedgerBusy as exc:
            raise RequestRefused("owner_busy", str(exc)) from exc

    def _over_budget(self, exc: Exception, event: SampledGaussianEvent, unit: str, what: str) -> RequestRefused:
        def figure(value: float | None) -> str:
            return f"{value:.4f}" if value is not None else "unknown"

        try:
            spent: float | None = self.rule.epsilon(self.ledger.events())
        except Exception:  # the refusal stands; the figure is only for the reader
            spent = None
        reserved = sum(e.count for e in self.ledger.outstanding())
        return RequestRefused(
            "budget_exceeded",
            f"{what} {exc} (budget epsilon={self.config.epsilon} at delta={self.config.delta}, enforced with "
            f"{self.config.accountant.upper()}; spent {figure(spent)}; committed {figure(self.epsilon_committed())} "
            f"with the {reserved} releases that accepted run plans hold; this asks for {event.count} {unit} "
            f"at sigma={event.noise_multiplier:.4f}, q={event.sample_rate:.6f})",
        )

    def release(self, request: FeatureRequest, progress=None) -> bytes:
        """Validate, reserve in the ledger, compute, record, and only then return the reply bytes."""
        event = self.validate(request)

        def compute() -> bytes:
            released = self.mechanism.release(request, progress)
            rates = self.data.sample_rates(request.expected_group_size)
            return encode(
                FeatureReply(
                    request_id=request.request_id,
                    noisy_sums=released.noisy_sums,
                    basis_fingerprints=released.basis_fingerprints,
                    expected_counts=tuple(q * n for q, n in zip(rates, self.data.published_counts, strict=True)),
                    noise_multiplier=request.noise_multiplier,
                    clip_norm=self.config.clip_norm,
                    events=(event,),
                )
            )

        return self._reserve_then_release(request, event, compute)

    def kip_steps(self, request: KipStepRequest, progress=None) -> bytes:
        """Synchronised DP-KIP: the same reserve-compute-record path, one event of ``num_steps`` releases."""
        event = self.validate_kip(request)

        def compute() -> bytes:
            images, m, v = self.kip.run(request, progress)
            return encode(
                KipStepReply(
                    request_id=request.request_id,
                    images=images,
                    adam_m=m,
                    adam_v=v,
                    step=request.step + request.num_steps,
                    noise_multiplier=request.noise_multiplier,
                    clip_norm=self.config.clip_norm,
                    events=(event,),
                )
            )

        return self._reserve_then_release(request, event, compute)

    def _reserve_then_release(self, request, event: SampledGaussianEvent, compute) -> bytes:
        """The ledger row is written before any private computation and the reply recorded before it leaves;
        a repeated request id is answered from the ledger without spending again.

        The budget check runs outside every lock (the ledger re-checks that nothing changed before it
        writes); the computation runs outside the ledger's lock, one at a time, and a concurrent retry
        of the same request id waits for the first and gets its recorded answer.
        """
        digest = request_digest(request)
        unit = "draws" if isinstance(request, FeatureRequest) else "KIP steps (releases)"
        with self._refusals_of_reservation(event, unit, "release"):
            stored = self.ledger.reserve(request.request_id, digest, event, self.rule.check)
        if stored is not None:
            return stored
        with self._request_lock(request.request_id):
            stored = self.ledger.reply(request.request_id)
            if stored is not None:  # computed by a concurrent twin of this request
                return stored
            with self._compute_slot:
                reply = compute()
            self.ledger.record_reply(request.request_id, reply)
            return reply

    @contextlib.contextmanager
    def _request_lock(self, request_id: str):
        """One holder at a time per request id; the entry is dropped when nobody holds or waits for it."""
        with self._in_flight_guard:
            entry = self._in_flight.setdefault(request_id, [threading.Lock(), 0])
            entry[1] += 1
        try:
            with entry[0]:
                yield
        finally:
            with self._in_flight_guard:
                entry[1] -= 1
                if entry[1] == 0:
                    self._in_flight.pop(request_id, None)

    def validate(self, r: FeatureRequest) -> SampledGaussianEvent:
        """Check a release request against the owner's own limits; return the privacy event it would cost."""
        return self.validator.feature(r)

    def validate_kip(self, r: KipStepRequest) -> SampledGaussianEvent:
        """Check a KIP step request against the owner's own limits; return the privacy event it would cost."""
        return self.validator.kip(r)
