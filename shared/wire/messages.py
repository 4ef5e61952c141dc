"""The messages between distiller and owner, as the Python dataclasses both nodes use.

Their wire form is defined in ``shared/wire/rpc/owner.proto`` (one protobuf message per dataclass) and
``shared/wire/protocol.py`` converts between the two, checking every field on the way in. Plain values
only: decoding a message loads neither torch nor the accountants (a request's released length is
its signal kind's to say, ``shared.compute.signals``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from shared.wire.network_spec import NetworkSpec
from shared.wire.privacy_event import SampledGaussianEvent


@dataclass(frozen=True)
class DescribeRequest:
    kind: ClassVar[str] = "describe_request"


PRIVACY_UNITS = ("image", "patient")
# The form of a signal kind's name; which kinds exist is the registry's to say (shared.compute.signals).
SIGNAL_NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}")
DEFAULT_SIGNAL = "features"  # what a FeatureRequest (and a run) asks for unless it names another kind


@dataclass(frozen=True)
class OwnerInfo:
    """What the owner declares public: class names and counts, image shape, normalisation, limits."""

    kind: ClassVar[str] = "owner_info"
    owner_id: str
    class_names: tuple[str, ...]
    class_counts: tuple[int, ...]
    image_shape: tuple[int, ...]
    normalization: tuple[float, float]
    aux_hash: str
    clip_norm: float
    limits: dict
    # The rules the owner enforces, which a distiller must plan with (its own delta or accountant
    # would make a plan the owner refuses part-way).
    epsilon_budget: float = 1.0
    delta: float = 1e-5
    accountant: str = "prv"
    noise_sampler: str = "csprng"
    privacy_unit: str = "image"  # "patient": all of a patient's images are one record


@dataclass(frozen=True)
class FeatureRequest:
    """Ask for noisy per-class sums of clipped, projected statistics, one release per draw.

    ``signal`` names the per-example statistic (``features``: embeddings; ``gradients``: per-example
    loss gradients; ``kip``: packed moments of projected scattering features, for which the network
    fields only describe the images); ``subspace_dim`` 0 asks for no projection (not for ``kip``).
    Seeds here are public parts of the statistic. The Poisson sample and the noise never come from
    the request: the owner draws them from its own entropy-seeded generators.
    """

    kind: ClassVar[str] = "feature_request"
    request_id: str
    network: NetworkSpec
    network_seeds: tuple[int, ...]
    augment_seeds: tuple[int, ...]
    augmentation: str
    subspace_dim: int
    aux_hash: str
    expected_group_size: float
    noise_multiplier: float
    signal: str = DEFAULT_SIGNAL

    @property
    def num_draws(self) -> int:
        return len(self.network_seeds)


@dataclass(frozen=True)
class FeatureReply:
    """Noisy sums [draws, classes, k] and what the distiller needs to read them."""

    kind: ClassVar[str] = "feature_reply"
    request_id: str
    noisy_sums: np.ndarray
    expected_counts: tuple[float, ...]
    noise_multiplier: float
    clip_norm: float
    events: tuple[SampledGaussianEvent, ...]
    # [draws, f]: a public fingerprint of each draw's basis as the owner built it (shared.compute.subspace),
    # so the distiller can refuse to match against a basis that differs from its own; f = 0 without one.
    basis_fingerprints: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))


@dataclass(frozen=True)
class KipStepRequest:
    """Synchronised DP-KIP: run ``num_steps`` noised Adam steps on this synthetic set at the owner.

    Each step is one release: a Poisson sample of the private data (expected ``expected_group_size``
    per class), the clipped per-example gradients of the KRR loss with respect to ``images``, summed
    and noised once with std sigma * C. The returned set and Adam moments are a deterministic
    function of this request and the noisy gradients (post-processing). ``images`` are class-major
    with equally many per class (their labels are implied); ``step`` is Adam's step count so far.
    """

    kind: ClassVar[str] = "kip_step_request"
    request_id: str
    images: np.ndarray
    adam_m: np.ndarray
    adam_v: np.ndarray
    step: int
    num_steps: int
    expected_group_size: float
    noise_multiplier: float
    lr: float
    reg: float


@dataclass(frozen=True)
class KipStepReply:
    """The synthetic set and Adam moments after the request's steps, and the releases they cost."""

    kind: ClassVar[str] = "kip_step_reply"
    request_id: str
    images: np.ndarray
    adam_m: np.ndarray
    adam_v: np.ndarray
    step: int
    noise_multiplier: float
    clip_norm: float
    events: tuple[SampledGaussianEvent, ...]


@dataclass(frozen=True)
class PlanRequest:
    """Reserve a whole run before its first release, so that it never stops half-spent.

    ``template`` is the encoded first request of the run (a ``FeatureRequest`` or
    ``KipStepRequest``): the owner validates it against every limit as if it were sent, then
    reserves ``total_releases`` releases at its sigma and q in the ledger. Later requests whose id
    starts with ``request_prefix`` and whose sigma and q match draw on that reservation.
    """

    kind: ClassVar[str] = "plan_request"
    plan_id: str
    request_prefix: str
    total_releases: int
    template: bytes


@dataclass(frozen=True)
class PlanReply:
    """The owner's acceptance: the reservation it holds and the epsilon committed with it."""

    kind: ClassVar[str] = "plan_reply"
    plan_id: str
    event: SampledGaussianEvent
    epsilon_committed: float
    accountant: str
    delta: float


@dataclass(frozen=True)
class BudgetRequest:
    kind: ClassVar[str] = "budget_request"


@dataclass(frozen=True)
class BudgetReport:
    """The owner's own account of what it has released, from its ledger."""

    kind: ClassVar[str] = "budget_report"
    owner_id: str
    epsilon_budget: float
    delta: float
    epsilon_prv: float
    epsilon_rdp: float
    num_requests: int
    num_draws: int
    clip_norm: float
    events: tuple[SampledGaussianEvent, ...]
    public: tuple[str, ...] = field(default=())
    accountant: str = "prv"  # the one the owner enforces its budget with
    # Spent plus what accepted run plans still hold in reserve, under ``accountant``: the budget
    # a new run can have is what is left after this.
    epsilon_committed: float = 0.0
    reserved_releases: int = 0
    noise_sampler: str = "csprng"
    # What a new run may still spend, as the owner's budget rule computes it (owner_node.budget).
    epsilon_remaining: float = 0.0


@dataclass(frozen=True)
class ErrorReply:
    """A refusal: ``code`` is machine-readable (e.g. ``budget_exceeded``), ``message`` is for people."""

    kind: ClassVar[str] = "error"
    code: str
    message: str


# Every message, by the name of its body in owner.proto's ``Message``.
MESSAGE_TYPES: dict[str, type] = {
    cls.kind: cls
    for cls in (
        DescribeRequest,
        OwnerInfo,
        FeatureRequest,
        FeatureReply,
        KipStepRequest,
        KipStepReply,
        PlanRequest,
        PlanReply,
        BudgetRequest,
        BudgetReport,
        ErrorReply,
    )
}
