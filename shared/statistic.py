"""The per-example statistic both parties compute: augment, embed, project, clip.

The owner sums these over a Poisson sample and adds noise; the distiller pushes synthetic images
through exactly the same function and compares. Clipping is the last step, after projection, so
each example's contribution has L2 norm at most ``clip_norm`` whatever network or basis is used.
"""

from __future__ import annotations

import torch
from torch import nn

from shared.augmentation import augment
from shared.subspace import Subspace, fit_subspace

EMBED_CHUNK = 128


def embed_images(net: nn.Module, images: torch.Tensor, chunk: int = EMBED_CHUNK) -> torch.Tensor:
    """Embeddings of a public or private image set, without gradients, in fixed-size chunks."""
    with torch.inference_mode():
        parts = [net.embed(images[i : i + chunk]) for i in range(0, images.shape[0], chunk)]
    if not parts:
        return torch.zeros(0, net.spec.embedding_dim)
    return torch.cat(parts)


def public_subspace(net: nn.Module, aux_images: torch.Tensor, k: int) -> Subspace:
    """SER basis for one network: top-k PCA of the auxiliary embeddings (no augmentation)."""
    return fit_subspace(embed_images(net, aux_images), k)


def clip_rows(z: torch.Tensor, clip_norm: float) -> torch.Tensor:
    """Scale each row to L2 norm at most ``clip_norm``, in float64; a non-finite row becomes zero."""
    z = z.to(torch.float64)
    finite = torch.isfinite(z).all(dim=1, keepdim=True)
    z = torch.where(finite, z, torch.zeros_like(z))
    norms = torch.linalg.vector_norm(z, dim=1, keepdim=True)
    scale = clip_norm / torch.clamp(norms, min=clip_norm)
    scale = torch.where(torch.isfinite(norms), scale, torch.zeros_like(scale))
    return z * scale


def per_example_statistic(
    net: nn.Module,
    subspace: Subspace | None,
    images: torch.Tensor,
    augment_seed: int,
    strategy: str,
    clip_norm: float,
) -> torch.Tensor:
    """clip_C(P(embed(augment(x)))) for every row of ``images``; differentiable in ``images``."""
    embeddings = net.embed(augment(images, augment_seed, strategy))
    projected = subspace.project(embeddings) if subspace is not None else embeddings
    return clip_rows(projected, clip_norm)


def class_sums(stats: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per-class sums [num_classes, k] of per-example statistics."""
    out = torch.zeros(num_classes, stats.shape[1], dtype=stats.dtype)
    return out.index_add(0, labels.long(), stats)
