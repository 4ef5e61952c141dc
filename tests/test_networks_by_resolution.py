"""ConvNet depth follows the image size (a final feature map of about 4x4), for sampling and evaluation."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from distiller_node.sampling import SamplingConfig, make_plan
from owner_node.config import Limits
from shared.evaluation import EvaluationConfig, evaluate
from shared.messages import OwnerInfo
from shared.networks import NetworkSpec, build_network, depth_for_image_size


@pytest.mark.parametrize("size, depth", [(28, 3), (32, 3), (64, 4), (128, 5), (224, 6), (256, 6), (512, 7)])
def test_depth_by_image_size(size: int, depth: int) -> None:
    assert depth_for_image_size(size) == depth
    side = size >> depth
    assert 3 <= side <= 4


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
