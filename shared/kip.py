"""DP-KIP on scattering features (DESIGN section 2.2): the KRR loss, its exact per-example
gradients with respect to the synthetic images, and a decoupled statistic.

Notation. Synthetic set: m images X_s with fixed, balanced, centred one-hot labels Y_s [m, c] and
features S = phi(X_s) [m, d]. Private batch: features phi_t [n, d], labels y_t [n, c]. With the
inner-product kernel, K_ss = S S^T and K_ts = phi_t S^T; the ridge is relative to the kernel's
scale, lambda = reg * tr(K_ss) / m (the KIP convention: ``reg`` means the same whatever the feature
scale, and predictions do not change if all features are rescaled). Then

    A = K_ss + lambda I,   alpha = A^-1 Y_s,   pred_i = alpha^T S phi_i,   loss = sum_i ||y_i - pred_i||^2.

Synchronised DP-KIP (the paper's method). The owner needs, per private example i, the gradient
g_i of loss_i with respect to X_s, clipped to C. ``torch.func.vmap`` does not pass through kymatio,
so the gradient is taken in two exact stages:

* in feature space, in closed form (u_i = A^-1 S phi_i, r_i = pred_i - y_i, v_i = alpha r_i):

      dloss_i/dS = 2 v_i phi_i^T - 2 (u_i v_i^T + v_i u_i^T) S - (4 reg / m) (u_i . v_i) S;

* through the scattering of the synthetic images by one vector-Jacobian product per example, the
  cotangent being that m x d matrix. The forward pass is done once and its graph reused; with
  ``examples_per_pass`` = r > 1 the synthetic images are replicated r times so that one backward
  pass serves r examples (rows of different replicas never mix: the transform is per image).

  Cost: n backward passes over m images per step (about n * m image-VJPs). No cheaper exact route
  exists in general: the per-example norms need J_j^T phi_i for every synthetic image j and private
  example i, or the full Jacobians (784 passes), whichever is smaller.

Decoupled DP-KIP (new; not in the paper). With a linear kernel,

    loss = sum_i ||y_i||^2 - 2 tr(W^T sum_i phi_i y_i^T) + tr(W^T (sum_i phi_i phi_i^T) W),  W = S^T alpha,

so the private data enter only through M = sum_i z_i z_i^T and the per-class sums of z_i (with
z = public projection of phi; sum_i z_i y_i^T = class_sums^T Y_code for any label code). Per
example the owner forms the vector ``(tri(z z^T), z e_c^T)``: the upper triangle of z z^T with
off-diagonal entries scaled by sqrt(2), so its L2 norm equals ||z z^T||_F = ||z||^2, followed by z
placed in the block of the example's class (norm ||z||). The joint norm is sqrt(||z||^4 + ||z||^2).

Sensitivity: each example's vector is clipped jointly to L2 norm at most C (a non-finite one
counts as zero), and the projection depends only on public auxiliary data, so adding or removing
one record changes the released sum by at most C in L2, whatever the record. Adding N(0, sigma^2
C^2 I) to the sum once is therefore the Gaussian mechanism (the sampled Gaussian mechanism with
q = 1 over the whole private set, or with q < 1 over a Poisson sample), accounted exactly as one
feature-signal release. Everything computed from the noisy sum afterwards (unpacking, PSD
projection, optimising the synthetic set) is post-processing and costs no privacy.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from shared.scattering import scattering_features
from shared.statistic import clip_rows
from shared.subspace import Subspace, fit_subspace

DEFAULT_REG = 1e-6
FEATURE_GRAD_CHUNK = 32  # private examples per closed-form chunk: 32 x m x d float64 (100 MB at m = 100)


# ---------------------------------------------------------------- labels and the KRR loss


def centred_one_hot(labels: torch.Tensor, num_classes: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """One-hot rows minus 1/c: the regression targets of KIP (zero mean over classes)."""
    return torch.nn.functional.one_hot(labels.long(), num_classes).to(dtype) - 1.0 / num_classes


def synthetic_labels(ipc: int, num_classes: int) -> torch.Tensor:
    """Class of each synthetic image, class-major and balanced: [0]*ipc + [1]*ipc + ...; fixed, never learnt."""
    return torch.arange(num_classes).repeat_interleave(ipc)


def ridge(k_ss: torch.Tensor, reg: float) -> torch.Tensor:
    """lambda = reg * tr(K_ss) / m: a ridge relative to the kernel's scale (differentiable)."""
    return reg * torch.diagonal(k_ss).sum() / k_ss.shape[0]


def _regularised_gram(phi_s: torch.Tensor, reg: float) -> torch.Tensor:
    k_ss = phi_s @ phi_s.T
    return k_ss + ridge(k_ss, reg) * torch.eye(k_ss.shape[0], dtype=k_ss.dtype, device=k_ss.device)


def krr_predict(phi_s: torch.Tensor, y_s: torch.Tensor, phi_t: torch.Tensor, reg: float = DEFAULT_REG) -> torch.Tensor:
    """K_ts (K_ss + lambda I)^-1 Y_s [n, c]; differentiable in ``phi_s`` (the KIP loss and its evaluation)."""
    alpha = torch.linalg.solve(_regularised_gram(phi_s, reg), y_s)
    return (phi_t @ phi_s.T) @ alpha


def krr_loss(
    phi_s: torch.Tensor, y_s: torch.Tensor, phi_t: torch.Tensor, y_t: torch.Tensor, reg: float = DEFAULT_REG
) -> torch.Tensor:
    """sum_i ||y_i - pred_i||^2 over the private batch (a sum, not a mean: per-example terms add up)."""
    return ((y_t - krr_predict(phi_s, y_s, phi_t, reg)) ** 2).sum()


# ---------------------------------------------------------------- per-example gradients (synchronised DP-KIP)


@dataclass(frozen=True)
class SyntheticSolve:
    """What one step needs of the synthetic side, computed once and shared by every private example."""

    phi_s: torch.Tensor  # [m, d] float64
    a: torch.Tensor  # [m, m] K_ss + lambda I
    alpha: torch.Tensor  # [m, c] A^-1 Y_s
    reg: float

    @classmethod
    def of(cls, phi_s: torch.Tensor, y_s: torch.Tensor, reg: float) -> SyntheticSolve:
        phi_s = phi_s.detach().to(torch.float64)
        a = _regularised_gram(phi_s, reg)
        return cls(phi_s, a, torch.linalg.solve(a, y_s.to(torch.float64)), reg)


def per_example_feature_gradients(solve: SyntheticSolve, phi_t: torch.Tensor, y_t: torch.Tensor) -> torch.Tensor:
    """d loss_i / d phi_s for every private example, in closed form: float64 [n, m, d]."""
    s = solve.phi_s
    m = s.shape[0]
    phi_t = phi_t.to(torch.float64)
    k_st = s @ phi_t.T  # [m, n]
    u = torch.linalg.solve(solve.a, k_st)  # [m, n]: columns u_i = A^-1 S phi_i
    residual = k_st.T @ solve.alpha - y_t.to(torch.float64)  # [n, c]
    v = solve.alpha @ residual.T  # [m, n]: columns v_i = alpha r_i
    vs = v.T @ s  # [n, d]: S^T v_i
    us = u.T @ s  # [n, d]: S^T u_i
    uv = (u * v).sum(dim=0)  # [n]
    grads = 2.0 * torch.einsum("mi,id->imd", v, phi_t)
    grads -= 2.0 * (torch.einsum("mi,id->imd", u, vs) + torch.einsum("mi,id->imd", v, us))
    grads -= (4.0 * solve.reg / m) * uv[:, None, None] * s[None]
    return grads


def _finite_rows(phi_t: torch.Tensor) -> torch.Tensor:
    """Non-finite feature rows (a hostile or overflowing record) replaced by zero: their gradient is zero."""
    finite = torch.isfinite(phi_t).all(dim=1, keepdim=True)
    return torch.where(finite, phi_t, torch.zeros_like(phi_t))


def iter_per_example_image_gradients(
    images_s: torch.Tensor,
    y_s: torch.Tensor,
    phi_t: torch.Tensor,
    y_t: torch.Tensor,
    reg: float = DEFAULT_REG,
    examples_per_pass: int = 1,
) -> Iterator[torch.Tensor]:
    """Exact d loss_i / d X_s, in order, as chunks [r, m, C, H, W] in the images' dtype.

    A private example whose features are not finite gets a zero gradient (it cannot move the sum).
    """
    if examples_per_pass < 1:
        raise ValueError("examples_per_pass must be at least 1")
    m = images_s.shape[0]
    leaf = images_s.detach().repeat(examples_per_pass, 1, 1, 1).requires_grad_(True)
    feats = scattering_features(leaf)  # [r * m, d], graph kept for all backward passes
    solve = SyntheticSolve.of(feats[:m], y_s, reg)
    phi_t = _finite_rows(phi_t.to(torch.float64))
    n = phi_t.shape[0]
    for start in range(0, n, examples_per_pass):
        g = per_example_feature_gradients(
            solve, phi_t[start : start + examples_per_pass], y_t[start : start + examples_per_pass]
        )
        r = g.shape[0]
        cotangent = torch.zeros_like(feats)
        cotangent[: r * m] = g.reshape(r * m, -1).to(feats.dtype)
        (grad,) = torch.autograd.grad(feats, leaf, cotangent, retain_graph=start + examples_per_pass < n)
        yield grad[: r * m].reshape(r, *images_s.shape)


def per_example_image_gradients(
    images_s: torch.Tensor,
    y_s: torch.Tensor,
    phi_t: torch.Tensor,
    y_t: torch.Tensor,
    reg: float = DEFAULT_REG,
    examples_per_pass: int = 1,
) -> torch.Tensor:
    """All per-example gradients at once, [n, m, C, H, W] (tests and small batches; the owner streams)."""
    parts = list(iter_per_example_image_gradients(images_s, y_s, phi_t, y_t, reg, examples_per_pass))
    return torch.cat(parts) if parts else images_s.new_zeros(0, *images_s.shape)


def clipped_gradient_sum(
    images_s: torch.Tensor,
    y_s: torch.Tensor,
    phi_t: torch.Tensor,
    y_t: torch.Tensor,
    clip_norm: float,
    reg: float = DEFAULT_REG,
    examples_per_pass: int = 1,
) -> torch.Tensor:
    """sum_i clip_C(g_i), float64 [m, C, H, W]: the noise-free core of one synchronised DP-KIP release."""
    total = torch.zeros(images_s.shape, dtype=torch.float64)
    for g in iter_per_example_image_gradients(images_s, y_s, phi_t, y_t, reg, examples_per_pass):
        total += clip_rows(g.reshape(g.shape[0], -1), clip_norm).sum(dim=0).reshape(images_s.shape)
    return total


def clipped_feature_gradient_sum(
    phi_s: torch.Tensor, y_s: torch.Tensor, phi_t: torch.Tensor, y_t: torch.Tensor, clip_norm: float, reg: float
) -> torch.Tensor:
    """sum_i clip_C(d loss_i / d phi_s), float64 [m, d]: a cheaper variant, clipped in feature space.

    Not the paper's statistic (that clips image gradients), but equally private: noised, it is
    pulled back to the images by one VJP through the scattering at the distiller (post-processing).
    It needs no backward pass per example; the price is m x d noise coordinates instead of m x 784.
    """
    solve = SyntheticSolve.of(phi_s, y_s, reg)
    phi_t = _finite_rows(phi_t.to(torch.float64))
    total = torch.zeros(solve.phi_s.shape, dtype=torch.float64)
    for start in range(0, phi_t.shape[0], FEATURE_GRAD_CHUNK):
        g = per_example_feature_gradients(
            solve, phi_t[start : start + FEATURE_GRAD_CHUNK], y_t[start : start + FEATURE_GRAD_CHUNK]
        )
        total += clip_rows(g.reshape(g.shape[0], -1), clip_norm).sum(dim=0).reshape(total.shape)
    return total


# ---------------------------------------------------------------- decoupled DP-KIP


@dataclass(frozen=True)
class FeatureProjection:
    """z = (phi - mean) @ basis / scale: a public principal subspace of auxiliary scattering features.

    ``scale`` (the median norm of the projected auxiliary features) puts typical ||z|| near 1, so the
    two blocks of the decoupled statistic (norms ||z||^2 and ||z||) weigh about the same under the
    joint clip. It rescales the kernel only, which the relative ridge makes irrelevant to predictions.
    """

    subspace: Subspace
    scale: float

    @property
    def dim(self) -> int:
        return self.subspace.dim

    def apply(self, phi: torch.Tensor) -> torch.Tensor:
        return self.subspace.project(phi.to(self.subspace.basis.dtype)).to(torch.float64) / self.scale


def public_projection(aux_features: torch.Tensor, k: int) -> FeatureProjection:
    """Top-``k`` PCA of public auxiliary scattering features (costs no privacy), with its public scale."""
    subspace = fit_subspace(aux_features, k)
    norms = torch.linalg.vector_norm(subspace.project(aux_features.to(torch.float32)).to(torch.float64), dim=1)
    scale = float(norms.median())
    return FeatureProjection(subspace, scale if math.isfinite(scale) and scale > 0 else 1.0)


def decoupled_dim(k: int, num_classes: int) -> int:
    """Length of the released vector: k (k + 1) / 2 second-moment entries plus k per class."""
    return k * (k + 1) // 2 + k * num_classes


def _triangle(k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Upper-triangle indices and weights (1 on the diagonal, sqrt 2 off it): a norm-preserving packing."""
    rows, cols = torch.triu_indices(k, k)
    weights = torch.full(rows.shape, math.sqrt(2.0), dtype=torch.float64)
    weights[rows == cols] = 1.0
    return rows, cols, weights


def decoupled_statistic(z: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Each example's unclipped vector (tri(z z^T), z e_c^T), materialised: float64 [n, D] (small k only)."""
    z = z.to(torch.float64)
    n, k = z.shape
    rows, cols, weights = _triangle(k)
    second = (z[:, rows] * z[:, cols]) * weights
    first = torch.zeros(n, num_classes, k, dtype=torch.float64)
    first[torch.arange(n), labels.long()] = z
    return torch.cat([second, first.reshape(n, -1)], dim=1)


def decoupled_scales(z: torch.Tensor, clip_norm: float) -> torch.Tensor:
    """min(1, C / sqrt(||z||^4 + ||z||^2)) per example; zero for a non-finite or overflowing example."""
    z = z.to(torch.float64)
    sq = (z * z).sum(dim=1)
    norms = torch.sqrt(sq * sq + sq)
    scale = clip_norm / torch.clamp(norms, min=clip_norm)
    ok = torch.isfinite(z).all(dim=1) & torch.isfinite(norms)
    return torch.where(ok, scale, torch.zeros_like(scale))


def clipped_decoupled_sum(z: torch.Tensor, labels: torch.Tensor, num_classes: int, clip_norm: float) -> torch.Tensor:
    """sum_i clip_C(decoupled_statistic_i), float64 [D], without materialising the per-example vectors.

    Equal to clipping the materialised rows and summing (a test checks it): the joint norm has the
    closed form above, and sum_i s_i z_i z_i^T = (sqrt(s) z)^T (sqrt(s) z).
    """
    z = z.to(torch.float64)
    scales = decoupled_scales(z, clip_norm)
    z = torch.where(scales[:, None] > 0, z, torch.zeros_like(z))  # no inf * 0 below
    root = z * scales.sqrt()[:, None]
    k = z.shape[1]
    rows, cols, weights = _triangle(k)
    second = (root.T @ root)[rows, cols] * weights
    first = torch.zeros(num_classes, k, dtype=torch.float64).index_add(0, labels.long(), z * scales[:, None])
    return torch.cat([second, first.reshape(-1)])


def unpack_decoupled(vector: torch.Tensor, k: int, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(M [k, k] symmetric second moment, class sums [c, k]) from a (noisy) released vector."""
    if vector.shape != (decoupled_dim(k, num_classes),):
        raise ValueError(f"expected a vector of length {decoupled_dim(k, num_classes)}, got {tuple(vector.shape)}")
    vector = vector.to(torch.float64)
    rows, cols, weights = _triangle(k)
    t = rows.numel()
    second = torch.zeros(k, k, dtype=torch.float64)
    second[rows, cols] = vector[:t] / weights
    second[cols, rows] = vector[:t] / weights
    return second, vector[t:].reshape(num_classes, k)


def psd_part(m: torch.Tensor) -> torch.Tensor:
    """Nearest positive semi-definite matrix (negative eigenvalues set to 0).

    Noise can make the released second moment indefinite, and then the reconstructed loss is
    unbounded below; this post-processing keeps it a sum of squares.
    """
    evals, evecs = torch.linalg.eigh(m)
    return (evecs * evals.clamp_min(0)) @ evecs.T


def decoupled_krr_loss(
    z_s: torch.Tensor,
    y_s: torch.Tensor,
    second_moment: torch.Tensor,
    class_sums: torch.Tensor,
    label_code: torch.Tensor,
    reg: float = DEFAULT_REG,
    label_energy: float = 0.0,
) -> torch.Tensor:
    """The KRR loss from released sums: label_energy - 2 tr(W^T V) + tr(W^T M W), W = Z_s^T alpha.

    ``z_s`` [m, k] are the synthetic features in the same projection as the release (differentiable),
    ``label_code`` [c, c] maps a class to its target row (centred one-hot: I - 1/c), so that
    V = class_sums^T label_code = sum_i z_i y_i^T. ``label_energy`` = sum_i ||y_i||^2 does not depend
    on the synthetic set; pass it only to compare loss values.
    """
    z_s = z_s.to(torch.float64)
    alpha = torch.linalg.solve(_regularised_gram(z_s, reg), y_s.to(torch.float64))
    w = z_s.T @ alpha  # [k, c]: pred(z) = w^T z
    v = class_sums.to(torch.float64).T @ label_code.to(torch.float64)  # [k, c]
    return label_energy - 2.0 * (w * v).sum() + (w * (second_moment.to(torch.float64) @ w)).sum()
