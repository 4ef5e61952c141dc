"""Empirical privacy audit: a distinguishing game with a canary record, run on the real mechanism.

The owner's mechanism answers the same request many times on a private set without the canary
(world 0) and with it (world 1). Each release is scored white-box: the inner product of the canary
class's noisy sums with the canary's own clipped, projected statistic under the same public network
and augmentation (``CanaryGame``: features, gradients, decoupled kip), or of the noisy gradient of a
one-step synchronised KIP message with the canary's own clipped gradient (``KipStepCanaryGame``).
A threshold test on the scores has false-positive and false-negative rates that any
(epsilon, delta)-DP mechanism must keep apart by at most e^epsilon; Clopper-Pearson upper bounds on
both rates turn the observed separation into an epsilon *lower bound* that holds with the chosen
confidence. A correct mechanism keeps it below the accountant's claim; a broken one (noise too small,
clipping skipped) pushes it above. The audit never leaves the owner: nothing is released or spent.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from owner_node.audit_verdict import AuditResult, lower_bound
from owner_node.data import PrivateData
from owner_node.kip_mechanism import ADAM_BETAS, KipStepMechanism
from owner_node.mechanism import FeatureMechanism
from shared.accounting import epsilon
from shared.compute.kip import DEFAULT_REG, centred_one_hot, iter_per_example_image_gradients
from shared.compute.networks import NetworkSpec
from shared.compute.scattering import scattering_features
from shared.compute.signals import get_signal_kind
from shared.compute.statistic import clip_rows, per_example_statistic
from shared.compute.subspace import content_hash
from shared.images.image_set import ImageSet
from shared.progress import progress_bar
from shared.run_choices import KIP_SYNC, METHODS
from shared.wire.messages import DEFAULT_SIGNAL, FeatureRequest, KipStepRequest
from shared.wire.privacy_event import SampledGaussianEvent


@dataclass(frozen=True)
class AuditConfig:
    """The audited release and the size of the game. Every choice here is public."""

    trials: int = 1000  # releases per world
    draws: int = 1  # draws per release, all scored together
    noise_multiplier: float = 1.0
    expected_group_size: float | None = None  # None: q = 1, every record in every draw (tightest game)
    network: NetworkSpec = field(default_factory=lambda: NetworkSpec(width=16, depth=3))
    subspace_dim: int = 32
    augmentation: str = "none"
    signal: str = DEFAULT_SIGNAL  # one of METHODS: a feature request's signal kind, or a kip-sync step
    kip_ipc: int = 1  # kip-sync: synthetic images per class in the audited message
    delta: float = 1e-5
    confidence: float = 0.95
    seed: int = 0  # public seeds (networks, augmentation, threshold split); never the sample or noise

    def __post_init__(self) -> None:
        if self.trials < 20:
            raise ValueError("an audit needs at least 20 trials per world")
        if not 0 < self.confidence < 1:
            raise ValueError("confidence must be in (0, 1)")
        if self.signal not in METHODS:
            raise ValueError(f"cannot audit signal {self.signal!r}; known: {', '.join(METHODS)}")
        if self.signal != KIP_SYNC and get_signal_kind(self.signal).needs_projection and self.subspace_dim < 1:
            raise ValueError(f"{self.signal} signals need a projection (subspace_dim >= 1)")
        if self.signal == KIP_SYNC and self.draws != 1:
            raise ValueError(
                "a kip-sync audit plays one step per message (its noisy gradient is read back from Adam's m)"
            )
        if self.kip_ipc < 1:
            raise ValueError("kip_ipc must be at least 1")


def crafted_canaries(shape: tuple[int, ...], seed: int) -> dict[str, torch.Tensor]:
    """Out-of-distribution images a worst-case adversary might plant (uint8)."""
    c, h, w = shape
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    g = torch.Generator().manual_seed(seed)
    return {
        "white": torch.full(shape, 255, dtype=torch.uint8),
        "checkerboard": (((yy // 2 + xx // 2) % 2) * 255).to(torch.uint8).expand(c, h, w).clone(),
        "stripes": ((xx % 4 < 2) * 255).to(torch.uint8).expand(c, h, w).clone(),
        "noise": torch.randint(0, 256, shape, generator=g, dtype=torch.uint8),
    }


def with_record(data: PrivateData, image: torch.Tensor, label: int) -> PrivateData:
    images = torch.cat([data.images, image[None]])
    labels = torch.cat([data.labels, torch.tensor([label])])
    return PrivateData.from_image_set(ImageSet(images, labels, data.class_names), data.normalization)


def _share_public_networks(*mechanisms: FeatureMechanism) -> None:
    """Every trial asks for the same public seeds: build each network and basis once, not per release.

    Only the public, data-independent step is cached; sampling, statistic, clipping and noise run
    the mechanism's own code at every release.
    """
    built: dict[tuple, tuple] = {}
    original = mechanisms[0].network_and_subspace

    def network_and_subspace(spec: NetworkSpec, seed: int, k: int, signal: str = DEFAULT_SIGNAL):
        key = (spec, seed, k, signal)
        if key not in built:
            built[key] = original(spec, seed, k, signal)
        return built[key]

    for m in mechanisms:
        m.network_and_subspace = network_and_subspace


def most_separated(
    candidates: dict[str, torch.Tensor], statistic: Callable[[torch.Tensor], torch.Tensor], others: torch.Tensor
) -> str:
    """The candidate whose clipped statistic is longest and least like the class's own records'."""

    def separation(x: torch.Tensor) -> float:
        s = statistic(x[None])[0]
        return float(s @ s - (others @ s).abs().max())

    return max(candidates, key=lambda name: separation(candidates[name]))


def normalised(image: torch.Tensor, normalization: tuple[float, float]) -> torch.Tensor:
    return (image.float() / 255.0 - normalization[0]) / normalization[1]


class DistinguishingGame:
    """What every game shares: one release per world per trial, a score, the bound and the claim.

    Subclasses build the two worlds' mechanisms and the request, and set ``canary`` and
    ``sample_rate``; ``release_score(world)`` runs the real mechanism once and scores its output.
    """

    config: AuditConfig
    label: int
    canary: str
    sample_rate: float
    class_names: tuple[str, ...]

    def release_score(self, world: int) -> float:
        raise NotImplementedError

    def claimed_epsilon(self) -> float:
        event = SampledGaussianEvent(self.config.noise_multiplier, self.sample_rate, self.config.draws)
        return epsilon([event], self.config.delta, "prv")

    def play(self, show_progress: bool = True, on_trial: Callable[[int], None] | None = None) -> AuditResult:
        without, with_ = [], []
        for t in progress_bar(range(self.config.trials), desc="audit (trials per world)", disable=not show_progress):
            without.append(self.release_score(0))
            with_.append(self.release_score(1))
            if on_trial is not None:
                on_trial(t)
        s0, s1 = np.array(without), np.array(with_)
        eps, threshold, (fpr, fnr, fpr_u, fnr_u), n_eval = lower_bound(
            s0, s1, self.config.delta, self.config.confidence, np.random.default_rng(self.config.seed)
        )
        return AuditResult(
            claimed_epsilon=self.claimed_epsilon(),
            epsilon_lower_bound=eps,
            threshold=threshold,
            false_positive_rate=fpr,
            false_negative_rate=fnr,
            false_positive_upper=fpr_u,
            false_negative_upper=fnr_u,
            evaluation_trials=n_eval,
            canary=f"{self.canary} image in class {self.label} ({self.class_names[self.label]})",
            config=asdict(self.config),
            scores_without=s0.tolist(),
            scores_with=s1.tolist(),
        )


class CanaryGame(DistinguishingGame):
    """World 0 is ``data``; world 1 adds one canary record of class ``label``."""

    def __init__(
        self,
        data: PrivateData,
        aux_images: torch.Tensor,
        clip_norm: float,
        config: AuditConfig,
        label: int = 0,
        mechanism_class: type[FeatureMechanism] = FeatureMechanism,
        aux_labels: torch.Tensor | None = None,
    ):
        if config.signal == KIP_SYNC:
            raise ValueError("kip-sync messages are audited by KipStepCanaryGame")
        self.config, self.label, self.class_names = config, label, data.class_names
        spec = NetworkSpec(
            **(
                asdict(config.network)
                | {
                    "channels": data.image_shape[0],
                    "image_size": data.image_shape[1],
                    "num_classes": len(data.class_names),
                }
            )
        )
        rng = np.random.default_rng(config.seed)
        seeds = rng.integers(0, 2**31 - 1, size=(2, config.draws))
        group = config.expected_group_size or float(max(data.class_counts) + 1)
        self.request = FeatureRequest(
            request_id="audit",
            network=spec,
            network_seeds=tuple(int(s) for s in seeds[0]),
            augment_seeds=tuple(int(s) for s in seeds[1]),
            augmentation=config.augmentation,
            subspace_dim=config.subspace_dim,
            aux_hash=content_hash(aux_images),
            expected_group_size=group,
            noise_multiplier=config.noise_multiplier,
            signal=config.signal,
        )
        if get_signal_kind(config.signal).needs_labels and aux_labels is None:
            raise ValueError(f"auditing {config.signal!r} signals needs the auxiliary set's labels (for its subspace)")
        if (
            config.subspace_dim > len(aux_images) - 1
        ):  # as the owner service refuses it (shared.compute.subspace.fit_subspace)
            raise ValueError(
                f"subspace_dim {config.subspace_dim} needs at least {config.subspace_dim + 1} auxiliary images, "
                f"there are {len(aux_images)} (n images centred on their mean span n - 1 directions)"
            )
        self.without = mechanism_class(data, aux_images, clip_norm, aux_labels)
        self.canary, image = self._choose_canary(data, clip_norm)
        self.with_ = mechanism_class(with_record(data, image, label), aux_images, clip_norm, aux_labels)
        _share_public_networks(self.without, self.with_)
        self.directions = self._canary_statistics(image, data.normalization, clip_norm)
        rates = data.sample_rates(group)
        self.sample_rate = max(max(rates), with_record(data, image, label).sample_rates(group)[label])

    def _statistic(self, net_seed: int, aug_seed: int, strategy: str, x: torch.Tensor, clip: float) -> torch.Tensor:
        """Clipped projected statistics of class-``label`` images ``x`` under one draw's public choices."""
        r = self.request
        net, subspace = self.without.network_and_subspace(r.network, net_seed, r.subspace_dim, r.signal)
        labels = torch.full((x.shape[0],), self.label, dtype=torch.long)
        with torch.inference_mode():
            return per_example_statistic(net, subspace, x, aug_seed, strategy, clip, labels, r.signal)

    def _canary_statistics(self, image: torch.Tensor, normalization, clip_norm: float) -> list[torch.Tensor]:
        """The canary's clipped projected statistic under each draw's public network and augmentation."""
        x = normalised(image, normalization)[None]
        seeds = zip(self.request.network_seeds, self.request.augment_seeds, strict=True)
        return [self._statistic(n, a, self.request.augmentation, x, clip_norm)[0] for n, a in seeds]

    def _choose_canary(self, data: PrivateData, clip_norm: float) -> tuple[str, torch.Tensor]:
        net_seed, aug_seed = self.request.network_seeds[0], self.request.augment_seeds[0]

        def statistic(x: torch.Tensor) -> torch.Tensor:
            return self._statistic(net_seed, aug_seed, "none", x, clip_norm)

        others = statistic(data.float_images(data.by_class[self.label]))
        candidates = crafted_canaries(data.image_shape, self.config.seed)
        normalised_candidates = {k: normalised(v, data.normalization) for k, v in candidates.items()}
        name = most_separated(normalised_candidates, statistic, others)
        return name, candidates[name]

    def score(self, sums: np.ndarray) -> float:
        """<noisy class sums, canary statistic>, added over the draws of one release."""
        rows = torch.from_numpy(sums[:, self.label]).double()
        return float(sum(float(rows[d] @ s) for d, s in enumerate(self.directions)))

    def release_score(self, world: int) -> float:
        return self.score((self.with_ if world else self.without).release(self.request).noisy_sums)


class KipStepCanaryGame(DistinguishingGame):
    """A one-step synchronised DP-KIP message in both worlds; world 1 adds a canary of class ``label``.

    The request starts Adam from zero moments, so the reply's first moment is (1 - beta1) times the
    step's noisy clipped gradient sum: the score reads that sum back and takes its inner product with
    the canary's own clipped gradient at the (public) synthetic set of the request.
    """

    def __init__(
        self,
        data: PrivateData,
        clip_norm: float,
        config: AuditConfig,
        label: int = 0,
        mechanism_class: type[KipStepMechanism] = KipStepMechanism,
    ):
        if config.signal != KIP_SYNC:
            raise ValueError(f"KipStepCanaryGame audits kip-sync messages, not {config.signal!r}")
        self.config, self.label, self.class_names = config, label, data.class_names
        num_classes = len(data.class_names)
        shape = (config.kip_ipc * num_classes, *data.image_shape)
        images = torch.randn(shape, generator=torch.Generator().manual_seed(config.seed))  # public
        group = config.expected_group_size or float(max(data.class_counts) + 1)
        zeros = np.zeros(shape, dtype=np.float32)
        self.request = KipStepRequest(
            request_id="audit",
            images=images.numpy(),
            adam_m=zeros,
            adam_v=zeros.copy(),
            step=0,
            num_steps=1,
            expected_group_size=group,
            noise_multiplier=config.noise_multiplier,
            lr=0.01,
            reg=DEFAULT_REG,
        )
        self.images = images
        self.y_s = centred_one_hot(torch.arange(num_classes).repeat_interleave(config.kip_ipc), num_classes)
        self.clip_norm = clip_norm
        others = self._statistic(data.float_images(data.by_class[label]))
        candidates = crafted_canaries(data.image_shape, config.seed)
        self.canary = most_separated(
            {k: normalised(v, data.normalization) for k, v in candidates.items()}, self._statistic, others
        )
        image = candidates[self.canary]
        self.direction = self._statistic(normalised(image, data.normalization)[None])[0]
        with_canary = with_record(data, image, label)
        self.without = mechanism_class(data, clip_norm)
        self.with_ = mechanism_class(with_canary, clip_norm)
        self.sample_rate = max(max(data.sample_rates(group)), with_canary.sample_rates(group)[label])

    def _statistic(self, x: torch.Tensor) -> torch.Tensor:
        """Clipped per-example gradients [n, m*C*H*W] of class-``label`` images ``x`` at the request's set."""
        y_t = centred_one_hot(torch.full((x.shape[0],), self.label, dtype=torch.long), len(self.class_names))
        parts = iter_per_example_image_gradients(
            self.images, self.y_s, scattering_features(x), y_t, self.request.reg, examples_per_pass=10
        )
        return torch.cat([clip_rows(g.reshape(g.shape[0], -1).double(), self.clip_norm) for g in parts])

    def release_score(self, world: int) -> float:
        _, m, _ = (self.with_ if world else self.without).run(self.request)
        noisy_sum = torch.from_numpy(m).double().flatten() / (1 - ADAM_BETAS[0])
        return float(noisy_sum @ self.direction)


def audit_subset(data: ImageSet, per_class: int, seed: int) -> ImageSet:
    """A small seeded sample of each class: the game is about one record, not the data's size."""
    g = torch.Generator().manual_seed(seed)
    index = []
    for c in range(data.num_classes):
        ix = torch.nonzero(data.labels == c).flatten()
        index.append(ix[torch.randperm(len(ix), generator=g)[:per_class]])
    return data.subset(torch.cat(index).sort().values)
