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


@dataclass(frozen=True)
class Subspace:
    """An affine subspace: statistics map to ``(v - mean) @ basis`` (basis has orthonormal columns)."""

    mean: torch.Tensor  # [d]
    basis: torch.Tensor  # [d, k]

    @property
    def dim(self) -> int:
        return int(self.basis.shape[1])

    def project(self, v: torch.Tensor) -> torch.Tensor:
        return (v - self.mean) @ self.basis

    def nbytes(self) -> int:
        return self.mean.numel() * self.mean.element_size() + self.basis.numel() * self.basis.element_size()


def fit_subspace(embeddings: torch.Tensor, k: int) -> Subspace:
    """Top-``k`` principal subspace of ``embeddings`` [n, d], centred on their mean."""
    n, d = embeddings.shape
    if not 1 <= k <= min(n, d):
        raise ValueError(f"subspace dimension {k} must be in 1..min(n={n}, d={d})")
    e = embeddings.detach().to(torch.float64)
    mean = e.mean(dim=0)
    centred = e - mean
    # Right singular vectors via the smaller Gram matrix: identical results, far less work when n << d.
    if n < d:
        gram = centred @ centred.T
        evals, evecs = torch.linalg.eigh(gram)
        order = torch.argsort(evals, descending=True)[:k]
        sv = evals[order].clamp_min(0).sqrt()
        basis = (centred.T @ evecs[:, order]) / sv.clamp_min(1e-12)
    else:
        evals, evecs = torch.linalg.eigh(centred.T @ centred)
        order = torch.argsort(evals, descending=True)[:k]
        basis = evecs[:, order]
    basis = canonical_signs(basis)
    return Subspace(mean=mean.to(torch.float32), basis=basis.to(torch.float32).contiguous())


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
