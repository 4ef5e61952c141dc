"""Public principal subspaces (SER): where private statistics are projected before clipping.

A subspace depends only on public auxiliary data and a public network seed, so it costs no
privacy. Both parties compute it with the same code from the same inputs, and the result is made
deterministic: float64 SVD, then each component's sign fixed so its largest entry is positive.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch

SUBSPACE_CHUNK = 8192  # columns handled in float64 at a time


@dataclass(frozen=True)
class Subspace:
    """An affine subspace: statistics map to ``(v - mean) @ basis / scale`` (basis has orthonormal columns).

    ``scale`` is a public normalisation (1 for features and gradients; see ``statistic.public_subspace``).
    """

    mean: torch.Tensor  # [d]
    basis: torch.Tensor  # [d, k]
    scale: float = 1.0

    @property
    def dim(self) -> int:
        return int(self.basis.shape[1])

    def project(self, v: torch.Tensor) -> torch.Tensor:
        z = (v - self.mean) @ self.basis
        return z if self.scale == 1.0 else z / self.scale

    def nbytes(self) -> int:
        return self.mean.numel() * self.mean.element_size() + self.basis.numel() * self.basis.element_size()


def fit_subspace(vectors: torch.Tensor, k: int, chunk: int = SUBSPACE_CHUNK) -> Subspace:
    """Top-``k`` principal subspace of ``vectors`` [n, d], centred on their mean.

    Gradient statistics make d large (tens of thousands of parameters), so the float64 work is done
    ``chunk`` columns at a time: besides the float32 input, memory is the n x n Gram matrix and the
    d x k basis, never a float64 copy of the whole input.
    """
    n, d = vectors.shape
    if not 1 <= k <= min(n, d):
        raise ValueError(f"subspace dimension {k} must be in 1..min(n={n}, d={d})")
    v = vectors.detach()
    mean = v.to(torch.float64).mean(dim=0) if d <= chunk else _column_mean(v, chunk)

    def centred(lo: int) -> torch.Tensor:
        return v[:, lo : lo + chunk].to(torch.float64) - mean[lo : lo + chunk]

    # Right singular vectors via the smaller Gram matrix: identical results, far less work when n << d.
    if n < d:
        gram = torch.zeros(n, n, dtype=torch.float64)
        for lo in range(0, d, chunk):
            c = centred(lo)
            gram += c @ c.T
        evals, evecs = torch.linalg.eigh(gram)
        order = torch.argsort(evals, descending=True)[:k]
        inv_sv = 1.0 / evals[order].clamp_min(0).sqrt().clamp_min(1e-12)
        top = evecs[:, order]
        basis = torch.empty(d, k, dtype=torch.float64)
        for lo in range(0, d, chunk):
            basis[lo : lo + chunk] = (centred(lo).T @ top) * inv_sv
    else:
        c = v.to(torch.float64) - mean
        evals, evecs = torch.linalg.eigh(c.T @ c)
        order = torch.argsort(evals, descending=True)[:k]
        basis = evecs[:, order]
    basis = canonical_signs(basis)
    return Subspace(mean=mean.to(torch.float32), basis=basis.to(torch.float32).contiguous())


def _column_mean(v: torch.Tensor, chunk: int) -> torch.Tensor:
    return torch.cat([v[:, lo : lo + chunk].to(torch.float64).mean(dim=0) for lo in range(0, v.shape[1], chunk)])


def canonical_signs(basis: torch.Tensor) -> torch.Tensor:
    """Flip each column so that its entry of largest magnitude is positive."""
    idx = basis.abs().argmax(dim=0)
    signs = torch.sign(basis[idx, torch.arange(basis.shape[1])])
    signs[signs == 0] = 1.0
    return basis * signs


def content_hash(images: torch.Tensor | np.ndarray) -> str:
    """SHA-256 over dtype, shape and bytes: pins the public auxiliary set both parties use."""
    array = images.numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    array = np.ascontiguousarray(array)
    h = hashlib.sha256()
    h.update(str(array.dtype).encode())
    h.update(str(tuple(array.shape)).encode())
    h.update(array.tobytes())
    return h.hexdigest()
