"""Gradient signals: torch.func's per-example gradients are each example's own gradient."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from shared.compute import gradients
from shared.compute.gradients import gradients_in_chunks, num_parameters, per_example_gradients
from shared.compute.networks import NetworkSpec, build_network, freeze

SPEC = NetworkSpec(width=6, depth=2, channels=1, image_size=16, num_classes=4)


def _loop_gradients(net, images, labels, create_graph: bool = False) -> list[torch.Tensor]:
    """The reference: one backward pass per example, nothing batched."""
    params = [p for p in net.parameters()]
    out = []
    for x, y in zip(images, labels, strict=True):
        loss = F.cross_entropy(net(x[None]), y[None])
        grads = torch.autograd.grad(loss, params, create_graph=create_graph)
        out.append(torch.cat([g.flatten() for g in grads]))
    return out


def _data(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 16, 16, generator=g), torch.randint(4, (n,), generator=g)


def test_per_example_gradients_equal_a_loop() -> None:
    net = build_network(SPEC, 1)
    images, labels = _data(9)
    batched = per_example_gradients(freeze(build_network(SPEC, 1)), images, labels)
    loop = torch.stack(_loop_gradients(net, images, labels))
    assert batched.shape == (9, num_parameters(SPEC)) == loop.shape
    assert torch.allclose(batched, loop, atol=1e-6, rtol=1e-5)


def test_gradients_do_not_depend_on_the_rest_of_the_batch() -> None:
    net = freeze(build_network(SPEC, 2))
    images, labels = _data(8)
    whole = per_example_gradients(net, images, labels)
    alone = per_example_gradients(net, images[3:4], labels[3:4])
    assert torch.allclose(whole[3:4], alone, atol=1e-6)
    assert torch.allclose(gradients_in_chunks(net, images, labels), whole, atol=1e-6)


def test_wide_networks_are_split_into_chunks_with_the_same_result(monkeypatch) -> None:
    """Memory bound for wide networks: fewer examples per vectorised pass, same gradients."""
    net = freeze(build_network(SPEC, 5))
    images, labels = _data(7)
    whole = per_example_gradients(net, images, labels)
    per_example = 4 * num_parameters(SPEC) + SPEC.activation_bytes  # its gradient and its activations
    monkeypatch.setattr(gradients, "GRADIENT_CHUNK_BYTES", per_example * 3)
    assert gradients.gradient_chunk(SPEC) == 3
    assert torch.allclose(per_example_gradients(net, images, labels), whole, atol=1e-6)
    assert torch.allclose(gradients_in_chunks(net, images, labels), whole, atol=1e-6)


def test_image_gradients_through_per_example_gradients_equal_a_loop() -> None:
    """The distiller differentiates a function of per-example gradients with respect to the images."""
    g = torch.Generator().manual_seed(4)
    images, labels = _data(5)
    project = torch.randn(num_parameters(SPEC), 3, generator=g)

    x1 = images.clone().requires_grad_(True)
    (per_example_gradients(freeze(build_network(SPEC, 3)), x1, labels) @ project).square().sum().backward()

    x2 = images.clone().requires_grad_(True)
    loop = torch.stack(_loop_gradients(build_network(SPEC, 3), x2, labels, create_graph=True))
    (loop @ project).square().sum().backward()
    assert torch.allclose(x1.grad, x2.grad, atol=1e-5, rtol=1e-4)


def test_num_parameters_counts_every_parameter() -> None:
    for width, depth in [(6, 2), (32, 3), (64, 3), (128, 3), (8, 1)]:
        spec = NetworkSpec(width=width, depth=depth)
        assert num_parameters(spec) == sum(p.numel() for p in build_network(spec, 0).parameters())
