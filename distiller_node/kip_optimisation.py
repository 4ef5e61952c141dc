"""Optimisation stage for decoupled DP-KIP: fit the synthetic set to the released moments, offline.

The stored ``kip`` releases are per-class sums of packed moments of projected scattering features
(``shared.compute.moments``). Summed over draws (and owners), they give M = sum_i z_i z_i^T (its noisy class
rows added up, then projected onto the PSD cone) and the per-class sums of z. The KRR loss of the
synthetic set against the whole private sample is a function of those two alone
(``shared.compute.kip.decoupled_krr_loss``), so Adam runs on it for as many steps as wanted with no further
release: pure post-processing. Scaling all sums by a constant does not move the minimiser, so no
normalisation by the sample size is needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from distiller_node.config import OptimisationConfig
from distiller_node.optimisation import SyntheticState
from distiller_node.signal_store import Signals
from shared.compute.kip import DEFAULT_REG, centred_one_hot, decoupled_krr_loss, psd_part
from shared.compute.moments import moment_k, unpack_moments
from shared.compute.scattering import scattering_features
from shared.compute.subspace import FINGERPRINT_TOL, Subspace, basis_fingerprint
from shared.progress import progress_bar


@dataclass(frozen=True)
class MomentEstimate:
    """What the private data contribute to the loss, estimated from the noisy releases."""

    second_moment: torch.Tensor  # [k, k], positive semi-definite
    class_sums: torch.Tensor  # [c, k]
    label_energy: float  # expected sum_i ||y_i||^2: makes the loss read as a squared error (plots only)

    @classmethod
    def from_releases(cls, noisy_sums: torch.Tensor, expected_counts: torch.Tensor) -> MomentEstimate:
        """``noisy_sums`` [draws, classes, moment_dim(k)] as stored, ``expected_counts`` [classes] per draw."""
        if noisy_sums.ndim != 3 or noisy_sums.shape[0] == 0:
            raise ValueError(f"expected stored releases [draws, classes, length], got {tuple(noisy_sums.shape)}")
        draws, classes, _ = noisy_sums.shape
        total = noisy_sums.to(torch.float64).sum(dim=0)
        second, sums = unpack_moments(total, moment_k(total.shape[1]))
        energy = draws * float(expected_counts.sum()) * (1.0 - 1.0 / classes)  # ||e_c - 1/c||^2 per example
        return cls(psd_part(second), sums, energy)


def check_kip_projection(signals: Signals, projection: Subspace, tol: float = FINGERPRINT_TOL) -> None:
    """Refuse releases whose owner projected them with another projection than ``projection``.

    One public projection serves every kip draw, so its fingerprint is computed once and compared
    with every stored draw's, before the releases are summed into one moment estimate.
    """
    own = basis_fingerprint(projection)
    for draw in range(signals.noisy_sums.shape[0]):
        signals.check_basis(draw, own, tol)


class KipDistiller:
    def __init__(
        self,
        estimate: MomentEstimate,
        projection: Subspace,
        cfg: OptimisationConfig,
        reg: float = DEFAULT_REG,
        signals: Signals | None = None,
        fingerprint_tol: float = FINGERPRINT_TOL,
    ):
        """``signals``: the stored releases ``estimate`` was made from; given, their owners' projection
        fingerprints are checked against ``projection`` before anything is optimised."""
        if projection.dim != estimate.class_sums.shape[1]:
            raise ValueError(
                f"the projection has {projection.dim} dimensions, the releases {estimate.class_sums.shape[1]}"
            )
        if signals is not None:
            check_kip_projection(signals, projection, fingerprint_tol)
        self.estimate = estimate
        self.projection = projection
        self.cfg = cfg
        self.reg = reg
        num_classes = estimate.class_sums.shape[0]
        self.label_code = centred_one_hot(torch.arange(num_classes), num_classes)

    def loss(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        z_s = self.projection.project(scattering_features(images))
        y_s = self.label_code[labels]
        e = self.estimate
        return decoupled_krr_loss(z_s, y_s, e.second_moment, e.class_sums, self.label_code, self.reg, e.label_energy)

    def run(self, state: SyntheticState, checkpoint: Path | None = None, show_progress: bool = True) -> SyntheticState:
        cfg = self.cfg
        images = state.images.clone().requires_grad_(True)
        opt = torch.optim.Adam([images], lr=cfg.lr)
        it0, losses = state.iteration, list(state.losses)
        if checkpoint is not None and checkpoint.exists():
            saved = torch.load(checkpoint, weights_only=False)
            images.data.copy_(saved["images"])
            opt.load_state_dict(saved["optimizer"])
            it0, losses = saved["iteration"], saved["losses"]
        bar = progress_bar(
            total=cfg.iterations, initial=it0, desc="optimisation (KIP)", unit="it", disable=not show_progress
        )
        for it in range(it0, cfg.iterations):
            opt.zero_grad(set_to_none=True)
            loss = self.loss(images, state.labels)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            bar.update(1)
            if it % 20 == 0:
                bar.set_postfix(loss=f"{losses[-1]:.4g}")
            if checkpoint is not None and (it + 1) % cfg.checkpoint_every == 0:
                self._save(checkpoint, images, opt, it + 1, losses)
        bar.close()
        if checkpoint is not None:
            self._save(checkpoint, images, opt, cfg.iterations, losses)
        final = images.detach()
        # KIP evaluates the optimised set itself (no moving average).
        return SyntheticState(final, final.clone(), state.labels, cfg.iterations, losses)

    @staticmethod
    def _save(path: Path, images: torch.Tensor, opt: torch.optim.Optimizer, iteration: int, losses: list) -> None:
        tmp = path.with_name(f".{path.name}.tmp")
        torch.save(
            {"images": images.detach(), "optimizer": opt.state_dict(), "iteration": iteration, "losses": losses}, tmp
        )
        tmp.replace(path)
