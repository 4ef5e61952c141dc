"""Distillation methods: how a run turns the owners' releases into a synthetic set, one class per method.

``distiller_node.pipeline.run_distillation`` is the common skeleton (plan, reserve, release,
optimise, evaluate, report); a method fills in what differs. Matching a signal kind's noisy class
sums with the same statistic of the synthetic set (``SignalMatching``) is the default for every kind
in ``shared.compute.signals``; decoupled DP-KIP and synchronised DP-KIP are their own methods. A method is
chosen by the run's ``signal`` setting (``distillation_method``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar

import torch

from distiller_node.aux_prior import AuxPrior, prior_applies
from distiller_node.client import OwnerClient
from distiller_node.config import OptimisationConfig
from distiller_node.kip_optimisation import KipDistiller, MomentEstimate
from distiller_node.kip_sync import first_request, run_kip_sync
from distiller_node.network_cache import NetworkCache
from distiller_node.optimisation import Distiller, SyntheticState
from distiller_node.sampling import SamplingPlan, run_sampling
from distiller_node.signal_store import Signals, SignalStore
from shared.compute.augmentation import parse_strategy
from shared.compute.signals import SignalKind, get_signal_kind
from shared.compute.subspace import Subspace
from shared.datasets import to_float
from shared.evaluation import krr_accuracy
from shared.images.image_set import ImageSet
from shared.run_choices import KIP_SYNC
from shared.wire.messages import KipStepRequest


@dataclass
class Run:
    """What every stage of one run works with, once the plan is accepted."""

    clients: list[OwnerClient]
    plan: SamplingPlan
    out: Path
    aux: tuple[torch.Tensor, torch.Tensor]  # public auxiliary images (normalised floats) and labels
    optimisation: OptimisationConfig
    clip_norm: float
    device: torch.device
    show_progress: bool
    in_flight: int


class DistillationMethod:
    """One way from releases to a synthetic set; ``release`` and ``optimise`` are timed as separate stages."""

    name: ClassVar[str]
    single_owner: ClassVar[bool] = False
    loss_label: ClassVar[str] = "squared distance to noisy class sums"
    scattering_krr: ClassVar[bool] = False  # also score the set by KRR on scattering features (the KIP protocol)
    takes_aux_prior: ClassVar[bool] = False  # fits the auxiliary prior (``distiller_node.aux_prior``)

    def __init__(self) -> None:
        self.cache_stats: dict = {}
        self.projection: Subspace | None = None  # a public projection the KRR score is also taken through

    @property
    def augmentable(self) -> bool:
        return True

    @property
    def sensitivity(self) -> str:
        """Why one record moves a release by at most C, as the privacy report states it."""
        raise NotImplementedError

    def check(self, augmentation: str, num_owners: int, aux_prior: float = 0.0) -> None:
        """Refuse, before anything is asked of an owner, settings this method cannot run with."""
        if aux_prior > 0 and not self.takes_aux_prior:
            raise ValueError(
                f"{self.name} has no auxiliary prior (it fits moments, not a projected statistic): set aux_prior to 0"
            )
        if not self.augmentable and parse_strategy(augmentation):
            raise ValueError(f"{self.name} is matched without augmentation: set the sampling augmentation to 'none'")
        if self.single_owner and num_owners != 1:
            raise ValueError(f"{self.name} runs against exactly one owner")

    def uses_aux_prior(self, opt: OptimisationConfig, plan: SamplingPlan) -> bool:
        """Whether this run fits the auxiliary prior: asked for, and a projection that leaves something out."""
        return self.takes_aux_prior and prior_applies(opt.aux_prior, plan.subspace_dim)

    def own_scores(
        self,
        train_x: torch.Tensor,
        train_y: torch.Tensor,
        test: ImageSet,
        normalization: tuple[float, float],
        classes: int,
    ) -> dict | None:
        """The method's own evaluation protocol beside the ConvNet trainings (None: it has none). KIP's: KRR
        on scattering features with the synthetic set as support, full and through the optimised projection."""
        if not self.scattering_krr:
            return None
        test_x = to_float(test.images, normalization)
        krr = {"scattering": krr_accuracy(train_x, train_y, test_x, test.labels, classes)}
        if self.projection is not None:
            krr["projected"] = krr_accuracy(train_x, train_y, test_x, test.labels, classes, self.projection)
        return krr

    def format_scores(self, krr: dict, k: int) -> str:
        projected = f", {100 * krr['projected']:.2f}% (projected, k={k})" if "projected" in krr else ""
        return (
            "test accuracy (KRR on scattering features, synthetic set as support): "
            f"{100 * krr['scattering']:.2f}% (full features){projected}"
        )

    def first_request(self, plan: SamplingPlan, images: torch.Tensor, lr: float) -> KipStepRequest | None:
        """The run's first message, when the owner must see it to accept the plan (None: the plan's own)."""
        return None

    def release(self, run: Run, state: SyntheticState) -> SyntheticState:
        """Ask the owners for every release of the plan (stored in the run folder, so a rerun resumes)."""
        self.signals: Signals = run_sampling(
            run.clients, run.plan, SignalStore(run.out / "signals"), run.show_progress, run.in_flight
        )
        return state

    def optimise(self, run: Run, state: SyntheticState) -> SyntheticState:
        """Post-processing of the releases: no privacy cost, however many iterations."""
        raise NotImplementedError


def step_for_plan(opt: OptimisationConfig, plan: SamplingPlan) -> OptimisationConfig:
    """``opt`` with its lr scaled as the plan says (``sampling.group_scale``: the owners' caps lowered the group)."""
    return opt if plan.step_scale == 1.0 else replace(opt, lr=opt.lr * plan.step_scale)


class SignalMatching(DistillationMethod):
    """Match each draw's noisy class sums with the same clipped statistic of the synthetic set."""

    takes_aux_prior = True

    def __init__(self, kind: SignalKind) -> None:
        super().__init__()
        self.kind = kind
        self.name = kind.name

    @property
    def augmentable(self) -> bool:
        return self.kind.augmentable

    @property
    def sensitivity(self) -> str:
        return (
            "each record enters at most one class sum per release; its statistic ("
            + self.kind.words
            + ") is clipped to L2 norm C after projection, so adding or removing it moves the release by at most C"
        )

    def optimise(self, run: Run, state: SyntheticState) -> SyntheticState:
        plan, opt = run.plan, step_for_plan(run.optimisation, run.plan)
        if opt.lr != run.optimisation.lr:
            print(f"optimiser step: lr {run.optimisation.lr:g} x {plan.step_scale:.4g} = {opt.lr:.4g} (lowered group)")
        cache = NetworkCache(
            plan.network, run.aux[0], plan.subspace_dim, opt.cache_mb * 2**20, plan.signal, run.aux[1], run.device
        )
        prior = AuxPrior.for_run(opt, plan.subspace_dim, cache, run.aux[1], self.signals.noisy_sums.shape[1])
        distiller = Distiller(self.signals, cache, plan.augmentation, run.clip_norm, opt, prior=prior)
        state = distiller.run(state, checkpoint=run.out / "checkpoint.pt", show_progress=run.show_progress)
        self.cache_stats = {"hits": cache.hits, "misses": cache.misses, "bytes": cache.nbytes}
        return state  # the cached networks and bases (~110 MB by default) go with the method's frame


class DecoupledKip(SignalMatching):
    """Decoupled DP-KIP: one public projection for every draw; the releases are summed once into moments."""

    takes_aux_prior = False

    name = "kip"
    loss_label = "KRR loss from the noisy moments"
    scattering_krr = True

    def __init__(self) -> None:
        super().__init__(get_signal_kind(self.name))

    def optimise(self, run: Run, state: SyntheticState) -> SyntheticState:
        plan = run.plan
        self.projection = self.kind.public_basis(None, run.aux[0], plan.subspace_dim, None)
        estimate = MomentEstimate.from_releases(self.signals.noisy_sums, self.signals.expected_counts)
        return KipDistiller(estimate, self.projection, run.optimisation, signals=self.signals).run(
            state, run.out / "checkpoint.pt", run.show_progress
        )


class SynchronisedKip(DistillationMethod):
    """Synchronised DP-KIP: every step is a release at the owner; nothing is left to optimise here."""

    name = KIP_SYNC
    single_owner = True
    loss_label = "KRR loss on the public auxiliary images (per request)"
    scattering_krr = True
    sensitivity = (
        "each step is one release: every sampled record's gradient of the KRR loss with respect to the "
        "synthetic images (exact, per example, from its scattering features) is clipped to L2 norm C and "
        "the clipped gradients are summed, so adding or removing a record moves the release by at most C; "
        "the owner's Adam update uses only the noisy sum (post-processing)"
    )

    @property
    def augmentable(self) -> bool:
        return False

    def first_request(self, plan: SamplingPlan, images: torch.Tensor, lr: float) -> KipStepRequest | None:
        return first_request(plan, images, lr)

    def release(self, run: Run, state: SyntheticState) -> SyntheticState:
        store = run.out / "kip_steps"
        return run_kip_sync(run.clients[0], run.plan, state, run.optimisation.lr, store, run.aux, run.show_progress)

    def optimise(self, run: Run, state: SyntheticState) -> SyntheticState:
        return state


_METHODS: dict[str, type[DistillationMethod]] = {}


def register_method(method: type[DistillationMethod]) -> type[DistillationMethod]:
    """Give a method of its own to the run setting ``method.name`` (otherwise a signal kind is matched)."""
    if method.name in _METHODS:
        raise ValueError(f"distillation method {method.name!r} is already registered")
    _METHODS[method.name] = method
    return method


def distillation_method(name: str) -> DistillationMethod:
    """A fresh method for a run whose ``signal`` setting is ``name``."""
    if name in _METHODS:
        return _METHODS[name]()
    return SignalMatching(get_signal_kind(name))


register_method(DecoupledKip)
register_method(SynchronisedKip)
