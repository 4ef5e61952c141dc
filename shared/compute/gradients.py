"""Per-example parameter gradients of a public network's classification loss (gradient signals).

Computed with ``torch.func`` (``vmap`` over ``grad``), which gives each example its own gradient
in one batched pass and stays differentiable in the images, so the distiller can optimise
synthetic images through the very function the owner applies to private ones. The networks are
the seeded ConvNets of ``shared.compute.networks``: GroupNorm, no BatchNorm, so an example's gradient
never depends on the other examples in its batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from shared.wire.network_spec import NetworkSpec, num_parameters

# Per-example gradients held at once (vmap's transient per-layer gradients and activations are a
# few times this): bounds the owner's working memory for wide networks without slowing small ones.
GRADIENT_CHUNK_BYTES = 64 * 2**20
MAX_GRADIENT_CHUNK = 256


def gradient_chunk(spec: NetworkSpec) -> int:
    """How many examples' gradients to compute in one vectorised pass for this network: each holds its
    gradient and its activations, the latter growing with the image side squared."""
    per_example = 4 * num_parameters(spec) + spec.activation_bytes
    return max(1, min(MAX_GRADIENT_CHUNK, GRADIENT_CHUNK_BYTES // per_example))


def per_example_gradients(net: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[n, P] flattened gradients of cross-entropy(net(x_i), y_i), parameters in ``named_parameters`` order."""
    params = {name: p.detach() for name, p in net.named_parameters()}

    def loss(p: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(functional_call(net, p, (x.unsqueeze(0),)), y.unsqueeze(0))

    batched = vmap(grad(loss), in_dims=(None, 0, 0))
    chunk = gradient_chunk(net.spec)
    parts = []
    for i in range(0, images.shape[0], chunk):
        grads = batched(params, images[i : i + chunk], labels[i : i + chunk].long())
        parts.append(torch.cat([grads[name].flatten(1) for name in params], dim=1))
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def gradients_in_chunks(net: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-example gradients of a public set, without a graph, into one preallocated float32 matrix."""
    out = torch.empty(images.shape[0], num_parameters(net.spec), device=images.device)
    chunk = gradient_chunk(net.spec)
    with torch.no_grad():
        for i in range(0, images.shape[0], chunk):
            out[i : i + chunk] = per_example_gradients(net, images[i : i + chunk], labels[i : i + chunk])
    return out
