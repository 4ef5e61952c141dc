"""The per-example statistic both parties compute: augment, describe, project, clip.

The owner sums these over a Poisson sample and adds noise; the distiller pushes synthetic images
through exactly the same function and compares. A signal kind (``shared.compute.signals``) describes an
image: ``features`` (the network's embedding), ``gradients`` (the flattened per-example gradient of
the network's classification loss, see ``shared.compute.gradients``) or ``kip`` (decoupled DP-KIP: wavelet
scattering features, which need no network, projected and expanded into their first and second
moments, see ``shared.compute.moments``). Clipping is the last step, after projection (and expansion), so each
example's contribution has L2 norm at most ``clip_norm`` whatever network, signal or basis.
"""

from __future__ import annotations

import torch
from torch import nn

from shared.compute.augmentation import augment
from shared.compute.device import autocast
from shared.compute.signals import get_signal_kind
from shared.compute.subspace import Subspace
from shared.wire.messages import DEFAULT_SIGNAL


def public_subspace(
    net: nn.Module,
    aux_images: torch.Tensor,
    k: int,
    signal: str = DEFAULT_SIGNAL,
    aux_labels: torch.Tensor | None = None,
) -> Subspace:
    """SER basis for one network and signal: top-k PCA of the auxiliary set's vectors (no augmentation)."""
    return get_signal_kind(signal).public_basis(net, aux_images, k, aux_labels)


def clip_factors(z: torch.Tensor, clip_norm: float) -> torch.Tensor:
    """Per-row float64 factors [n, 1] that bring each row to L2 norm at most ``clip_norm``.

    A row with a non-finite entry gets 0 (it contributes nothing).
    """
    z = z.to(torch.float64)
    finite = torch.isfinite(z).all(dim=1, keepdim=True)
    norms = torch.linalg.vector_norm(torch.where(finite, z, torch.zeros_like(z)), dim=1, keepdim=True)
    scale = clip_norm / torch.clamp(norms, min=clip_norm)
    return torch.where(finite & torch.isfinite(norms), scale, torch.zeros_like(scale))


def scale_rows(v: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """``v`` (float64) with each row times its factor; a row whose factor is 0 becomes exactly zero, NaN or not."""
    v = v.to(torch.float64)
    return torch.where(factors > 0, v, torch.zeros_like(v)) * factors


def clip_rows(z: torch.Tensor, clip_norm: float) -> torch.Tensor:
    """Scale each row to L2 norm at most ``clip_norm``, in float64; a non-finite row becomes zero."""
    return scale_rows(z, clip_factors(z, clip_norm))


def describe_augmented(
    net: nn.Module | None,
    images: torch.Tensor,
    augment_seed: int,
    strategy: str,
    labels: torch.Tensor | None = None,
    signal: str = DEFAULT_SIGNAL,
    precision: str = "float32",
) -> torch.Tensor:
    """describe(augment(x)) for every row: the unprojected vectors, float32, differentiable in ``images``.

    ``precision`` "bf16" autocasts the network pass of kinds that allow it (``shared.compute.device``).
    """
    kind = get_signal_kind(signal)
    augmented = augment(images, augment_seed, strategy)
    if kind.reduced_precision and precision != "float32":
        with autocast(images.device, precision):
            vectors = kind.describe(net, augmented, labels)
        return vectors.float()
    return kind.describe(net, augmented, labels)


def per_example_statistic(
    net: nn.Module,
    subspace: Subspace | None,
    images: torch.Tensor,
    augment_seed: int,
    strategy: str,
    clip_norm: float,
    labels: torch.Tensor | None = None,
    signal: str = DEFAULT_SIGNAL,
    precision: str = "float32",
) -> torch.Tensor:
    """clip_C(P(describe(augment(x)))) for every row of ``images``; differentiable in ``images``.

    A kind may expand the projected vector before the clip (``kip``: its packed moments).
    ``precision`` "bf16" autocasts the network pass of kinds that allow it (``shared.compute.device``); the
    projection and the clip stay in float32 / float64, so the sensitivity bound is unchanged.
    """
    kind = get_signal_kind(signal)
    vectors = describe_augmented(net, images, augment_seed, strategy, labels, signal, precision)
    if kind.needs_projection and subspace is None:
        raise ValueError(f"{kind.name} signals need a projection (subspace_dim >= 1)")
    projected = subspace.project(vectors) if subspace is not None else vectors
    return clip_rows(kind.expand(projected), clip_norm)


def class_sums(stats: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per-class sums [num_classes, k] of per-example statistics."""
    out = torch.zeros(num_classes, stats.shape[1], dtype=stats.dtype, device=stats.device)
    return out.index_add(0, labels.long().to(stats.device), stats)
