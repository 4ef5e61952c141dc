"""The auxiliary prior: public data only, the released statistic untouched, the residual exact, refusals."""

from __future__ import annotations

import pytest
import torch

from deploy.presets import PRESETS
from deploy.run_settings import RunSettings
from distiller_node.aux_prior import AuxPrior, split_statistic
from distiller_node.config import OptimisationConfig
from distiller_node.methods import distillation_method
from distiller_node.network_cache import NetworkCache
from distiller_node.optimisation import Distiller, initial_state
from distiller_node.signal_store import Signals
from shared.compute.augmentation import augment
from shared.compute.networks import build_network, freeze
from shared.compute.statistic import class_sums, per_example_statistic, public_subspace
from tests.conftest import NUM_CLASSES, SPEC

K = 5


def _aux(n: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 1, 16, 16, generator=g), torch.arange(n) % NUM_CLASSES


def test_the_released_part_is_the_owners_statistic_and_the_residual_is_what_the_projection_leaves_out() -> None:
    aux, _ = _aux()
    net = freeze(build_network(SPEC, 3))
    subspace = public_subspace(net, aux, K)
    g = torch.Generator().manual_seed(2)
    images = torch.randn(9, 1, 16, 16, generator=g) * 4
    images[6] *= 1e30  # huge
    images[7, 0, 3, 3] = float("nan")
    images[8, 0, 5, 5] = float("inf")
    args = (images, 11, "crop_flip", 1.0, None, "features", "float32")
    stat, residual = split_statistic(net, subspace, *args)
    # What is matched against the releases is exactly what the owner sums (clipped after the projection).
    assert torch.equal(stat, per_example_statistic(net, subspace, *args))
    assert torch.isfinite(stat).all() and torch.isfinite(residual).all()
    assert (stat.norm(dim=1) <= 1.0 + 1e-12).all()
    assert stat[7:].abs().max() == 0 and residual[7:].abs().max() == 0  # non-finite records add nothing
    # For ordinary rows: residual / clip factor + the projection, mapped back, is the centred embedding.
    vectors = net.embed(augment(images[:6], 11, "crop_flip")).double()
    z = subspace.project(vectors.float()).double()
    factors = (1.0 / z.norm(dim=1, keepdim=True)).clamp(max=1.0)
    rebuilt = residual[:6] / factors + z @ subspace.basis.double().T
    assert torch.allclose(rebuilt, vectors - subspace.mean.double(), atol=1e-4 * vectors.abs().max())
    assert (residual[:6].float() @ subspace.basis).abs().max() < 1e-4 * residual[:6].abs().max()


def _signals() -> Signals:
    g = torch.Generator().manual_seed(0)
    return Signals(
        noisy_sums=torch.randn(3, NUM_CLASSES, K, generator=g) * 3,
        expected_counts=torch.full((NUM_CLASSES,), 10.0, dtype=torch.float64),
        network_seeds=[0, 1, 2],
        augment_seeds=[100, 101, 102],
    )


def _residual_gap(prior: AuxPrior, images: torch.Tensor, labels: torch.Tensor, aux: torch.Tensor) -> float:
    """Mean squared gap, over the draws, between the set's and the auxiliary set's residual class means."""
    signals, total = _signals(), 0.0
    cache = NetworkCache(SPEC, aux, K, 1 << 28)
    for draw, seed in enumerate(signals.network_seeds):
        net, subspace = cache.get(seed)
        a = (images, signals.augment_seeds[draw], "crop_flip", 1.0, None, "features", "float32")
        _, residual = split_statistic(net, subspace, *a)
        target = prior.target(draw, net, subspace, signals.augment_seeds[draw], "crop_flip", 1.0, "features", "float32")
        means = class_sums(residual, labels, NUM_CLASSES) / torch.bincount(labels, minlength=NUM_CLASSES)[:, None]
        total += float((means - target).square().sum())
    return total / len(signals.network_seeds)


def test_the_prior_holds_the_left_out_directions_to_the_auxiliary_class_means() -> None:
    aux, aux_labels = _aux()
    cfg = OptimisationConfig(ipc=2, iterations=60, lr=0.3, checkpoint_every=1000, precision="float32")
    start = initial_state(NUM_CLASSES, 2, (1, 16, 16), 0)

    def fitted(weight: float) -> torch.Tensor:
        prior = AuxPrior(aux, aux_labels, NUM_CLASSES, weight, 1 << 28, 64.0) if weight else None
        d = Distiller(_signals(), NetworkCache(SPEC, aux, K, 1 << 28), "crop_flip", 1.0, cfg, prior=prior)
        return d.run(start, show_progress=False).images

    probe = AuxPrior(aux, aux_labels, NUM_CLASSES, 1.0, 1 << 28, 64.0)
    without, held = fitted(0.0), fitted(3.0)
    gap_without = _residual_gap(probe, without, start.labels, aux)
    gap_held = _residual_gap(probe, held, start.labels, aux)
    assert gap_held < 0.5 * gap_without, (gap_held, gap_without)


def test_the_prior_keeps_its_targets_within_its_memory_bound_and_recomputes_them_alike() -> None:
    aux, aux_labels = _aux()
    cache = NetworkCache(SPEC, aux, K, 1 << 28)
    one_target = NUM_CLASSES * SPEC.embedding_dim * 8
    prior = AuxPrior(aux, aux_labels, NUM_CLASSES, 1.0, one_target, 64.0)
    targets = []
    for draw in (0, 1, 0):
        net, subspace = cache.get(draw)
        targets.append(prior.target(draw, net, subspace, 100 + draw, "crop_flip", 1.0, "features", "float32"))
    assert len(prior._targets) == 1
    assert torch.equal(targets[0], targets[2]) and not torch.equal(targets[0], targets[1])


def test_refusals_name_what_is_wrong() -> None:
    aux, labels = _aux()
    with pytest.raises(ValueError, match="weight must be positive"):
        AuxPrior(aux, labels, NUM_CLASSES, 0.0, 1 << 20, 64.0)
    with pytest.raises(ValueError, match=r"class\(es\) \[3\]"):
        AuxPrior(aux, labels.clamp(max=2), NUM_CLASSES, 1.0, 1 << 20, 64.0)
    with pytest.raises(ValueError, match="aux_prior"):
        distillation_method("kip").check("none", 1, 1.0)
    with pytest.raises(ValueError, match="aux-prior"):
        RunSettings(aux_prior=-0.5)
    with pytest.raises(ValueError, match="aux-prior"):
        RunSettings.from_run_config({"aux-prior": float("nan")})


def test_the_preset_states_the_prior_and_kip_runs_without_it() -> None:
    assert RunSettings().distiller_config().optimisation.aux_prior == PRESETS["default"]["aux_prior"]
    assert RunSettings(aux_prior=0.0).distiller_config().optimisation.aux_prior == 0.0
    # The default preset's prior is for the methods that fit one; KIP presets and --signal kip take 0.
    assert RunSettings(signal="kip").distiller_config().optimisation.aux_prior == 0.0
    assert RunSettings(preset="kip-decoupled").distiller_config().optimisation.aux_prior == 0.0
    assert RunSettings.from_run_config({"aux-prior": -1.0}).aux_prior is None  # the preset's
    assert RunSettings.from_run_config({"aux-prior": 0.0}).distiller_config().optimisation.aux_prior == 0.0


def test_gradient_signals_take_the_prior_too() -> None:
    aux, aux_labels = _aux()
    cfg = OptimisationConfig(ipc=2, precision="float32")
    images = initial_state(NUM_CLASSES, 2, (1, 16, 16), 0).images
    labels = torch.arange(NUM_CLASSES).repeat_interleave(2)

    def gradient(weight: float) -> torch.Tensor:
        cache = NetworkCache(SPEC, aux, K, 1 << 28, "gradients", aux_labels)
        prior = AuxPrior(aux, aux_labels, NUM_CLASSES, weight, 1 << 28, 64.0) if weight else None
        d = Distiller(_signals(), cache, "crop_flip", 1.0, cfg, prior=prior)
        x = images.clone().requires_grad_(True)
        d.step(x, labels, 0)
        return x.grad

    plain, held = gradient(0.0), gradient(1.0)
    assert torch.isfinite(held).all() and not torch.allclose(plain, held)
