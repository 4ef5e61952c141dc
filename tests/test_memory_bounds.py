"""High-resolution images are worked through in chunks that bound activation memory, and chunking
changes no result: the owner's class sums, the distiller's gradient and an evaluation training are
the same with a budget of one image a pass as with one pass. An owner refuses a network whose single
image would exceed its own limit, before anything is spent."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from distiller_node.aux_prior import AuxPrior
from distiller_node.config import OptimisationConfig
from distiller_node.network_cache import NetworkCache
from distiller_node.optimisation import Distiller, initial_state
from distiller_node.signal_store import Signals
from owner_node.config import Limits
from owner_node.mechanism import clean_class_sums
from shared.compute.networks import NetworkSpec, build_network, freeze, image_chunk
from shared.compute.statistic import public_subspace
from shared.datasets import to_float
from shared.evaluation import train_once
from shared.evaluation_config import EvaluationConfig

SPEC = NetworkSpec(width=8, depth=2, channels=3, image_size=16, num_classes=4)
NORM = (0.4, 0.25)
ONE_IMAGE_MB = SPEC.activation_bytes / 2**20  # a budget of exactly one image a pass


def test_chunk_shrinks_with_the_square_of_the_image_side() -> None:
    small = NetworkSpec(width=64, depth=3, channels=3, image_size=32)
    large = replace(small, image_size=224, depth=6)
    assert large.activation_bytes == small.activation_bytes * 49
    assert small.activation_bytes == 2**20  # 4 maps x 4 bytes x 64 channels x 32 x 32
    assert image_chunk(small, 64) == 64
    assert image_chunk(large, 256) == 5  # 49 MB an image
    assert image_chunk(large, 10) == 1  # never zero
    assert image_chunk(small, 10_000, most=128) == 128


def test_owner_class_sums_do_not_depend_on_the_chunk_or_on_when_pixels_become_floats() -> None:
    g = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (23, 3, 16, 16), dtype=torch.uint8, generator=g)
    labels = torch.arange(23) % 4
    net = freeze(build_network(SPEC, 3))
    subspace = public_subspace(net, torch.randn(12, 3, 16, 16, generator=g), 5)
    args = (7, "crop_flip", 1.0, 4)
    whole = clean_class_sums(net, subspace, to_float(pixels, NORM), labels, *args, budget_mb=1024)
    chunked = clean_class_sums(net, subspace, pixels, labels, *args, normalization=NORM, budget_mb=ONE_IMAGE_MB)
    assert torch.allclose(whole, chunked, atol=1e-5)
    with pytest.raises(ValueError, match="normalization"):
        clean_class_sums(net, subspace, pixels, labels, *args)


@pytest.mark.parametrize("pea,prior", [(False, 0.0), (True, 0.0), (False, 1.5), (True, 1.5)])
def test_distiller_gradient_in_chunks_equals_one_pass(pea: bool, prior: float) -> None:
    g = torch.Generator().manual_seed(1)
    signals = Signals(
        noisy_sums=torch.randn(2, 4, 5, generator=g) * 3,
        expected_counts=torch.tensor([10.0, 12.0, 8.0, 10.0], dtype=torch.float64),
        network_seeds=[0, 1],
        augment_seeds=[100, 101],
    )
    aux = torch.randn(30, 3, 16, 16, generator=g)

    def gradient(budget_mb: float) -> tuple[float, torch.Tensor]:
        cfg = OptimisationConfig(ipc=3, pea=pea, activation_budget_mb=budget_mb, precision="float32")
        aux_prior = AuxPrior(aux, torch.arange(30) % 4, 4, prior, 1 << 28, budget_mb) if prior else None
        distiller = Distiller(signals, NetworkCache(SPEC, aux, 5, 1 << 28), "crop_flip", 1.0, cfg, prior=aux_prior)
        images = initial_state(4, 3, (3, 16, 16), 0).images.requires_grad_(True)
        loss = distiller.step(images, torch.arange(4).repeat_interleave(3), 1)
        return loss, images.grad

    loss_one, grad_one = gradient(1024)
    loss_chunked, grad_chunked = gradient(ONE_IMAGE_MB * (4 if pea else 1))
    assert loss_chunked == pytest.approx(loss_one, rel=1e-5)
    # float32 rounding only (kernels differ by batch size): far below the gradient's own scale
    assert (grad_chunked - grad_one).abs().max() <= 1e-4 * grad_one.abs().max()
    assert grad_one.abs().sum() > 0


def test_evaluation_micro_batches_train_the_same_network() -> None:
    g = torch.Generator().manual_seed(2)
    images, labels = torch.randn(20, 3, 16, 16, generator=g), torch.arange(20) % 4
    # float32: the claim is exactness up to float32 rounding (bf16, which "auto" picks on some CPUs, rounds
    # differently by batch size, as any bf16 pass does)
    cfg = EvaluationConfig(epochs=2, width=8, depth=2, batch_size=8, augmentation="none", precision="float32")
    whole = train_once(images, labels, SPEC, replace(cfg, activation_budget_mb=1024), seed=5)
    micro = train_once(images, labels, SPEC, replace(cfg, activation_budget_mb=ONE_IMAGE_MB), seed=5)
    for a, b in zip(whole.parameters(), micro.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-5)


def test_limits_refuse_a_zero_activation_budget() -> None:
    with pytest.raises(ValueError, match="max_activation_mb"):
        Limits(max_activation_mb=0)
