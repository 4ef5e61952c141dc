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

    loss = sum_i ||y_i||^2 - 2 tr(W^T sum_i z_i y_i^T) + tr(W^T (sum_i z_i z_i^T) W),  W = Z_s^T alpha,

so the private data enter only through M = sum_i z_i z_i^T and the per-class sums of z_i (z = the
public projection of phi; sum_i z_i y_i^T = class_sums^T Y_code for any label code). The owner
releases them as the ``kip`` signal kind (``shared.compute.statistic``): per-class sums of each example's
packed moments ``(tri(z z^T), z)`` (``shared.compute.moments``), clipped jointly to C after projection and
noised once, through the same mechanism and accountant as feature signals.

Sensitivity: the projection and its scale depend only on public auxiliary data, the packing is a
fixed function of z, and the clip is applied last to the whole vector (a non-finite one counts as
zero), so adding or removing one record changes one class row of the release by at most C in L2,
whatever the record: the sampled Gaussian mechanism with noise std sigma * C, as for features.
Everything computed from the noisy sums afterwards (summing the draws and the class rows of M,
PSD projection, optimising the synthetic set) is post-processing and costs no privacy.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from shared.compute.scattering import scattering_features
from shared.compute.statistic import clip_rows

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
