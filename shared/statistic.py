"""The per-example statistic both parties compute: augment, describe, project, clip.

The owner sums these over a Poisson sample and adds noise; the distiller pushes synthetic images
through exactly the same function and compares. Two signal kinds describe an image: ``features``
(the network's embedding), ``gradients`` (the flattened per-example gradient of the network's
classification loss, see ``shared.gradients``) and ``kip`` (decoupled DP-KIP: wavelet scattering
features, which need no network, projected and expanded into their first and second moments, see
``shared.moments``). Clipping is the last step, after projection (and expansion), so each
example's contribution has L2 norm at most ``clip_norm`` whatever network, signal or basis.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from shared.augmentation import augment
from shared.device import autocast
from shared.gradients import gradients_in_chunks, num_parameters, per_example_gradients
from shared.moments import moment_dim, pack_moments
from shared.networks import DEFAULT_ACTIVATION_BUDGET_MB, NetworkSpec, pass_chunk
from shared.run_choices import KIP_SYNC, METHODS, SIGNALS  # noqa: F401 (re-exported)
from shared.scattering import feature_dim, scattering_features
from shared.subspace import Subspace, fit_subspace

# kip: the projection is scaled so that the median auxiliary ||z|| is this; with C = 1 the median
# example's packed vector then has norm sqrt(0.75^4 + 0.75^2) = 0.90, just inside the clip.
KIP_TARGET_NORM = 0.75


def check_signal(signal: str) -> None:
    if signal not in SIGNALS:
        raise ValueError(f"unknown signal kind {signal!r}; known: {', '.join(SIGNALS)}")


def signal_dim(spec: NetworkSpec, signal: str) -> int:
    """Length of the unprojected per-example vector."""
    check_signal(signal)
    if signal == "features":
        return spec.embedding_dim
    if signal == "gradients":
        return num_parameters(spec)
    return feature_dim((spec.channels, spec.image_size, spec.image_size))


def released_dim(spec: NetworkSpec, signal: str, k: int) -> int:
    """Length of one released class sum for projection dimension ``k`` (0: no projection)."""
    if signal == "kip":
        if k < 1:
            raise ValueError("kip signals need a projection (subspace_dim >= 1)")
        return moment_dim(k)
    return k or signal_dim(spec, signal)


def describe(net: nn.Module, images: torch.Tensor, labels: torch.Tensor | None, signal: str) -> torch.Tensor:
    """The unprojected per-example vectors [n, signal_dim]; differentiable in ``images``."""
    if signal == "features":
        return net.embed(images)
    if signal == "gradients":
        if labels is None:
            raise ValueError("gradient signals need labels")
        return per_example_gradients(net, images, labels)
    if signal == "kip":
        return scattering_features(images)
    raise ValueError(f"unknown signal kind {signal!r}; known: {', '.join(SIGNALS)}")


def embed_images(net: nn.Module, images: torch.Tensor, budget_mb: float = DEFAULT_ACTIVATION_BUDGET_MB) -> torch.Tensor:
    """Embeddings of a public or private image set, without gradients, in chunks within ``budget_mb``."""
    chunk = pass_chunk(net.spec, images.device, budget_mb)
    with torch.inference_mode():
        parts = [net.embed(images[i : i + chunk]) for i in range(0, images.shape[0], chunk)]
    if not parts:
        return torch.zeros(0, net.spec.embedding_dim, device=images.device)
    return torch.cat(parts)


def public_subspace(
    net: nn.Module, aux_images: torch.Tensor, k: int, signal: str = "features", aux_labels: torch.Tensor | None = None
) -> Subspace:
    """SER basis for one network and signal: top-k PCA of the auxiliary set's vectors (no augmentation)."""
    check_signal(signal)
    if signal == "features":
        return fit_subspace(embed_images(net, aux_images), k)
    if signal == "kip":
        return kip_projection(scattering_features(aux_images), k)
    if aux_labels is None:
        raise ValueError("a gradient subspace needs the auxiliary set's labels")
    return fit_subspace(gradients_in_chunks(net, aux_images, aux_labels), k)


def kip_projection(aux_features: torch.Tensor, k: int) -> Subspace:
    """Top-``k`` PCA of public auxiliary scattering features, scaled to a public median norm.

    The scale balances the two moment blocks (norms ||z||^2 and ||z||) under the joint clip; it
    rescales the kernel only, which the KRR's relative ridge makes irrelevant to predictions.
    """
    subspace = fit_subspace(aux_features, k)
    norms = torch.linalg.vector_norm(subspace.project(aux_features.to(torch.float32)).double(), dim=1)
    median = float(norms.median())
    scale = median / KIP_TARGET_NORM if math.isfinite(median) and median > 0 else 1.0
    return Subspace(subspace.mean, subspace.basis, scale)


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
    labels: torch.Tensor | None = None,
    signal: str = "features",
    precision: str = "float32",
) -> torch.Tensor:
    """clip_C(P(describe(augment(x)))) for every row of ``images``; differentiable in ``images``.

    For ``kip`` the projected vector is expanded into its packed moments before the clip.
    ``precision`` "bf16" autocasts the network pass of feature signals (``shared.device``); the
    projection and the clip stay in float32 / float64, so the sensitivity bound is unchanged.
    """
    augmented = augment(images, augment_seed, strategy)
    if signal == "features" and precision != "float32":
        with autocast(images.device, precision):
            vectors = describe(net, augmented, labels, signal)
        vectors = vectors.float()
    else:
        vectors = describe(net, augmented, labels, signal)
    projected = subspace.project(vectors) if subspace is not None else vectors
    if signal == "kip":
        if subspace is None:
            raise ValueError("kip signals need a projection (subspace_dim >= 1)")
        projected = pack_moments(projected)
    return clip_rows(projected, clip_norm)


def class_sums(stats: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per-class sums [num_classes, k] of per-example statistics."""
    out = torch.zeros(num_classes, stats.shape[1], dtype=stats.dtype, device=stats.device)
    return out.index_add(0, labels.long().to(stats.device), stats)
