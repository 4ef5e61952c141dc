"""Second-moment packing for the decoupled DP-KIP statistic.

With a linear kernel on projected features z, the KRR loss of a synthetic set against private data
depends on the private data only through M = sum_i z_i z_i^T and the per-class sums of z_i. So each
example's vector is ``(tri(z z^T), z)``: the upper triangle of z z^T with off-diagonal entries
scaled by sqrt(2), which makes its L2 norm equal ||z z^T||_F = ||z||^2 (and, once unpacked, gives
the off-diagonal noise the variance of a symmetrised full matrix), followed by z itself. The owner
sums these per class like any other statistic, so the class enters through which row the example
is added to, and clipping the whole vector to C bounds the release's sensitivity by C.
"""

from __future__ import annotations

import functools
import math

import torch

from shared.compute.kip_shapes import moment_dim
from shared.compute.subspace import Subspace, fit_subspace


@functools.lru_cache(maxsize=8)
def _triangle(k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Upper-triangle indices and weights (1 on the diagonal, sqrt 2 off it): a norm-preserving packing."""
    rows, cols = torch.triu_indices(k, k)
    weights = torch.full(rows.shape, math.sqrt(2.0), dtype=torch.float64)
    weights[rows == cols] = 1.0
    return rows, cols, weights


def pack_moments(z: torch.Tensor) -> torch.Tensor:
    """[n, k] -> [n, moment_dim(k)] float64; differentiable in ``z``."""
    z = z.to(torch.float64)
    rows, cols, weights = _triangle(z.shape[1])
    return torch.cat([z[:, rows] * z[:, cols] * weights, z], dim=1)


def unpack_moments(class_rows: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class sums of packed vectors [c, moment_dim(k)] -> (M [k, k] over all classes, class sums [c, k]).

    M is summed over the class rows, so its noise is that of c independent releases added up.
    """
    if class_rows.ndim != 2 or class_rows.shape[1] != moment_dim(k):
        raise ValueError(f"expected [classes, {moment_dim(k)}] packed moments, got {tuple(class_rows.shape)}")
    rows, cols, weights = _triangle(k)
    t = rows.numel()
    packed = class_rows.to(torch.float64)
    second = packed[:, :t].sum(dim=0) / weights
    m = torch.zeros(k, k, dtype=torch.float64)
    m[rows, cols] = second
    m[cols, rows] = second
    return m, packed[:, t:]


def moment_k(length: int) -> int:
    """The k for which moment_dim(k) == length (raises if there is none)."""
    k = int((math.isqrt(8 * length + 9) - 3) // 2)
    if moment_dim(k) != length:
        raise ValueError(f"{length} is not the length of a packed moment vector")
    return k


# kip: the projection is scaled so that the median auxiliary ||z|| is this; with C = 1 the median
# example's packed vector then has norm sqrt(0.75^4 + 0.75^2) = 0.90, just inside the clip.
KIP_TARGET_NORM = 0.75


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
