"""Public principal subspaces (SER): where private statistics are projected before clipping.

A subspace depends only on public auxiliary data and a public network seed, so it costs no
privacy. Both parties compute it with the same code from the same inputs, and the result is made
deterministic: float64 SVD, then each component's sign fixed so its largest entry is positive.
That cannot make two machines agree when their float32 statistics differ near a tie, so the owner
also sends a fingerprint of each basis it used (``basis_fingerprint``) and the distiller refuses to
match a draw whose fingerprint differs from that of its own basis.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np
import scipy.linalg
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

    def residual(self, v: torch.Tensor) -> torch.Tensor:
        """What ``project`` leaves out, in original coordinates: ``(c - c @ basis @ basis.T) / scale``, c = v - mean."""
        c = v - self.mean
        r = c - (c @ self.basis) @ self.basis.T
        return r if self.scale == 1.0 else r / self.scale

    def nbytes(self) -> int:
        return self.mean.numel() * self.mean.element_size() + self.basis.numel() * self.basis.element_size()


def fit_subspace(vectors: torch.Tensor, k: int, chunk: int = SUBSPACE_CHUNK) -> Subspace:
    """Top-``k`` principal subspace of ``vectors`` [n, d], centred on their mean.

    Gradient statistics make d large (tens of thousands of parameters), so the float64 work is done
    ``chunk`` columns at a time: besides the float32 input, memory is the n x n Gram matrix and the
    d x k basis, never a float64 copy of the whole input.
    """
    n, d = vectors.shape
    if not 1 <= k <= min(n - 1, d):
        # Centred on their mean, n vectors span at most n - 1 directions: a k-th beyond that is
        # rounding noise, which two machines (or thread counts) would not compute alike.
        why = (
            f"{n} auxiliary vectors centred on their mean span at most {n - 1} directions"
            if n - 1 < d
            else f"the vectors have {d} entries"
        )
        raise ValueError(f"subspace dimension {k} must be in 1..{min(n - 1, d)}: {why}")
    v = vectors.detach()
    mean = v.to(torch.float64).mean(dim=0) if d <= chunk else _column_mean(v, chunk)

    def centred(lo: int) -> torch.Tensor:
        return v[:, lo : lo + chunk].to(torch.float64) - mean[lo : lo + chunk]

    # Right singular vectors via the smaller Gram matrix: identical results, far less work when n << d.
    if n < d:
        gram = torch.zeros(n, n, dtype=torch.float64, device=v.device)
        for lo in range(0, d, chunk):
            c = centred(lo)
            gram += c @ c.T
        evals, top = top_eigenpairs(gram, k)
        inv_sv = 1.0 / evals.clamp_min(0).sqrt().clamp_min(1e-12)
        basis = torch.empty(d, k, dtype=torch.float64, device=v.device)
        for lo in range(0, d, chunk):
            basis[lo : lo + chunk] = (centred(lo).T @ top) * inv_sv
    else:
        c = v.to(torch.float64) - mean
        basis = top_eigenpairs(c.T @ c, k)[1]
    basis = canonical_signs(basis)
    return Subspace(mean=mean.to(torch.float32), basis=basis.to(torch.float32).contiguous())


def top_eigenpairs(sym: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` largest eigenvalues of a symmetric float64 matrix, descending, and their eigenvectors.

    On a CPU only those ``k`` are computed (LAPACK's MRRR, ``dsyevr``), a fraction of a full
    decomposition when k is well below n; elsewhere the full ``eigh``. The two agree to rounding
    (~1e-14 here), far inside what the basis fingerprints tolerate.
    """
    n = sym.shape[0]
    if sym.device.type == "cpu":
        evals, evecs = scipy.linalg.eigh(sym.numpy(), subset_by_index=[n - k, n - 1], driver="evr", overwrite_a=False)
        evals, evecs = torch.from_numpy(evals), torch.from_numpy(evecs)
    else:
        evals, evecs = torch.linalg.eigh(sym)
    order = torch.argsort(evals, descending=True)[:k]
    return evals[order], evecs[:, order]


def _column_mean(v: torch.Tensor, chunk: int) -> torch.Tensor:
    return torch.cat([v[:, lo : lo + chunk].to(torch.float64).mean(dim=0) for lo in range(0, v.shape[1], chunk)])


def canonical_signs(basis: torch.Tensor) -> torch.Tensor:
    """Flip each column so that its entry of largest magnitude is positive."""
    idx = basis.abs().argmax(dim=0)
    signs = torch.sign(basis[idx, torch.arange(basis.shape[1], device=basis.device)])
    signs[signs == 0] = 1.0
    return basis * signs


# ---------------------------------------------------------------- agreement between the two parties
#
# Each party builds every basis itself, and float32 statistics computed with other thread counts,
# BLAS kernels or devices can flip a component's sign, swap or rotate near-equal components, or
# (at k = n) pick a different rounding-noise direction. The owner sends a fingerprint of each basis
# it used; the distiller compares it with its own before matching against that draw.

# Public and fixed: the probes are part of the protocol (changing them invalidates stored fingerprints).
FINGERPRINT_SEED = 0x5E12_F1A6
# Largest accepted discrepancy (max |a - b| over the larger RMS of the two). Measured on 500 auxiliary
# images (width-32 ConvNet; features d = 288, gradients d = 21,898; k up to n - 1 = 499): 1 vs 2 torch
# threads <= 1e-8; statistics perturbed at float32 rounding (2^-23 relative) <= 2e-5, but 0.1 at k = n;
# one component's sign flipped >= 0.06; two components rotated by theta: 0.3 to 2.5 theta, so every
# rotation above 4e-3 rad is caught. Float32 fingerprint entries add at most 6e-8.
FINGERPRINT_TOL = 1e-3
_FINGERPRINT_BLOCK = 1 << 20  # basis entries converted to float64 at a time


class SubspaceMismatch(RuntimeError):
    """The owner's basis for a draw is not the one this side built: matching it would fit the wrong statistic."""


def basis_fingerprint(subspace: Subspace) -> torch.Tensor:
    """``k`` float32 numbers pinning the map ``(v - mean) @ basis / scale`` itself; public, no data involved.

    Two fixed probes u, w in {-1, +1}^d (a seeded generator's integer draws, so no floating-point
    sampling differs between machines) go through the subspace's own projection in float64, giving
    a = project(u) and b = project(w), whose entries are O(1) (u . b_i has variance ||b_i||^2 = 1).
    Entry i is (a_i + b_(i+1 mod k)) / sqrt(2): every component enters two entries with independent
    coefficients, so a sign flip, a swap or a rotation of components changes the fingerprint
    (unlike a sum over components, and unlike one coefficient per component, which can be near 0),
    and so do a different mean or scale. The length is k, at most one class sum's.
    """
    d, k = subspace.basis.shape
    g = torch.Generator().manual_seed(FINGERPRINT_SEED)
    probes = torch.randint(0, 2, (2, d), generator=g, dtype=torch.int8).to(torch.float64).mul_(2).sub_(1)
    probes -= subspace.mean.detach().to("cpu", torch.float64)
    projected = torch.zeros(2, k, dtype=torch.float64)
    rows = max(1, _FINGERPRINT_BLOCK // max(k, 1))  # never a float64 copy of a whole (gradient) basis
    for lo in range(0, d, rows):
        projected += probes[:, lo : lo + rows] @ subspace.basis[lo : lo + rows].detach().to("cpu", torch.float64)
    projected /= subspace.scale
    return ((projected[0] + projected[1].roll(-1)) / math.sqrt(2)).to(torch.float32)


def fingerprint_discrepancy(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    """max |a - b| relative to the larger RMS of the two (so units and the kip scale do not matter).

    ``inf`` when the lengths differ (different subspace dimensions) or either holds a non-finite value.
    """
    x = torch.as_tensor(np.asarray(a), dtype=torch.float64).flatten()
    y = torch.as_tensor(np.asarray(b), dtype=torch.float64).flatten()
    if x.shape != y.shape or not (torch.isfinite(x).all() and torch.isfinite(y).all()):
        return math.inf
    if x.numel() == 0:
        return 0.0
    gap = float((x - y).abs().max())
    rms = max(float(x.square().mean().sqrt()), float(y.square().mean().sqrt()))
    if rms == 0.0:
        return 0.0 if gap == 0.0 else math.inf
    return gap / rms


def fingerprints_agree(
    a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray, tol: float = FINGERPRINT_TOL
) -> bool:
    """True when two fingerprints describe the same projection up to float32 rounding."""
    return fingerprint_discrepancy(a, b) <= tol


def content_hash(images: torch.Tensor | np.ndarray) -> str:
    """SHA-256 over dtype, shape and bytes: pins the public auxiliary set both parties use."""
    array = images.numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    array = np.ascontiguousarray(array)
    h = hashlib.sha256()
    h.update(str(array.dtype).encode())
    h.update(str(tuple(array.shape)).encode())
    h.update(array.tobytes())
    return h.hexdigest()
