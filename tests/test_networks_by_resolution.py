"""ConvNet depth follows the image size (a final feature map of about 4x4), for sampling and evaluation."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from distiller_node.config import SamplingConfig
from distiller_node.sampling import make_plan
from owner_node.config import Limits
from shared.compute.networks import NetworkSpec, build_network, depth_for_image_size
from shared.evaluation import evaluate
from shared.evaluation_config import EvaluationConfig
from shared.wire.messages import OwnerInfo


@pytest.mark.parametrize("size, depth", [(28, 3), (32, 3), (64, 4), (128, 5), (224, 6), (256, 6), (512, 7)])
def test_depth_by_image_size(size: int, depth: int) -> None:
    assert depth_for_image_size(size) == depth
    side = size >> depth
    assert 3 <= side <= 4


def test_a_network_for_images_takes_their_channels_size_and_depth_by_size_unless_given() -> None:
    """``NetworkSpec.for_images``: the one rule the plan, the evaluation and the benchmarks build networks by."""
    rgb64 = NetworkSpec.for_images(32, (3, 64, 64), 7)
    assert (rgb64.width, rgb64.depth, rgb64.channels, rgb64.image_size, rgb64.num_classes) == (32, 4, 3, 64, 7)
    assert NetworkSpec.for_images(16, (1, 28, 28), 10, depth=2).depth == 2
    assert NetworkSpec.for_images(16, (1, 28, 28), 10) == NetworkSpec(width=16, depth=3)


def test_owner_default_limits_admit_every_listed_resolution() -> None:
    limits = Limits()
    for size in (28, 64, 128, 224, 256):
        spec = NetworkSpec(width=8, depth=depth_for_image_size(size), channels=3, image_size=size)
        spec.validate(max_width=limits.max_network_width, max_depth=limits.max_network_depth)


def test_plan_for_a_64px_rgb_owner_uses_depth_4() -> None:
    info = OwnerInfo("o", ("a", "b"), (600, 600), (3, 64, 64), (0.5, 0.25), "h" * 64, 1.0, {"max_sample_rate": 1.0})
    plan = make_plan(SamplingConfig(draws=2, width=8, subspace_dim=4), [info], [1.0], 1e-5)
    assert (plan.network.depth, plan.network.channels, plan.network.image_size) == (4, 3, 64)
    net = build_network(plan.network, seed=0)
    assert net.embed(torch.zeros(2, 3, 64, 64)).shape == (2, 8 * 4 * 4)
    pinned = make_plan(replace(SamplingConfig(draws=2, width=8, subspace_dim=4), depth=2), [info], [1.0], 1e-5)
    assert pinned.network.depth == 2


def test_evaluation_network_follows_the_image_size() -> None:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(4, 3, 64, 64, generator=g), torch.tensor([0, 1, 0, 1])
    result = evaluate(x, y, x, y, 2, EvaluationConfig(runs=1, epochs=1, width=4, batch_size=4), show_progress=False)
    assert 0.0 <= result.mean <= 1.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("side", [28, 7, 5])
def test_pooling_is_the_authors_average_pooling(dtype: torch.dtype, side: int) -> None:
    """The CPU's faster pooling (``AvgPool2x2``) gives nn.AvgPool2d(2, 2)'s values and gradients, odd sides included."""
    from shared.compute.networks import AvgPool2x2

    g = torch.Generator().manual_seed(side)
    x = torch.randn(3, 4, side, side, generator=g).to(dtype)
    ours, ref = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    y, y_ref = AvgPool2x2()(ours), torch.nn.AvgPool2d(2, 2)(ref)
    w = torch.randn(y_ref.shape, generator=g).to(dtype)
    (y * w).sum().backward()
    (y_ref * w).sum().backward()
    tol = {"atol": 2e-2, "rtol": 2e-2} if dtype == torch.bfloat16 else {"atol": 1e-6, "rtol": 1e-6}
    assert y.shape == y_ref.shape and y.dtype == dtype
    assert type(y.grad_fn).__name__.startswith("_CpuAvgPool2x2")  # the CPU path ran, not avg_pool2d
    torch.testing.assert_close(y, y_ref, **tol)
    torch.testing.assert_close(ours.grad, ref.grad, **tol)


def test_embeddings_with_and_without_gradients_agree() -> None:
    """The owner embeds without gradients (avg_pool2d), the distiller with them (the CPU pooling path):
    the statistics they match must be the same function of the images."""
    net = build_network(NetworkSpec(width=16), 3)
    x = torch.randn(6, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        released = net.embed(x)
    optimised = net.embed(x.clone().requires_grad_(True))
    assert optimised.grad_fn is not None
    torch.testing.assert_close(optimised.detach(), released, atol=1e-6, rtol=1e-6)


def test_baseline_network_has_the_same_weights_and_embedding() -> None:
    from benchmarks.baseline import authors_network

    spec = NetworkSpec(width=16)
    ours, theirs = build_network(spec, 7), authors_network(spec, 7)
    assert any(isinstance(m, torch.nn.AvgPool2d) for m in theirs.modules())
    x = torch.randn(5, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(ours.embed(x), theirs.embed(x), atol=1e-6, rtol=1e-6)


def test_pooling_supports_gradients_of_gradients_and_vmap() -> None:
    """Gradient signals differentiate a per-example gradient (vmap over grad), through every pool."""
    from torch.func import grad, vmap

    from shared.compute.networks import AvgPool2x2

    pool = AvgPool2x2()
    x = torch.randn(2, 3, 5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1), requires_grad=True)
    assert torch.autograd.gradcheck(pool, (x,))
    assert torch.autograd.gradgradcheck(pool, (x,))
    per_example = vmap(grad(lambda v: pool(v.unsqueeze(0)).square().sum()))(x.detach())
    ref = vmap(grad(lambda v: torch.nn.functional.avg_pool2d(v.unsqueeze(0), 2, 2).square().sum()))(x.detach())
    torch.testing.assert_close(per_example, ref)
