"""Optimisation stage (DOS): fit synthetic images to the stored noisy releases.

Pure post-processing of released signals, so any number of iterations costs no privacy. Each
iteration picks a stored draw, rebuilds its network and subspace from the seed (refusing the draw
if the owner's fingerprint of its basis differs from this one's, ``Signals.check_basis``), pushes the
synthetic images of every class through the same augmentation, embedding, projection and
clipping, rescales each class's synthetic sum to the expected group size g_c, and minimises the
squared distance to the released noisy sum: sum_c || g_c * mean_c(syn) - noisy_sum_c ||^2. With the
auxiliary prior (``distiller_node.aux_prior``, weight w) the loss adds, in the directions the projection
leaves out, w * sum_c || g_c * (mean_c(syn residual) - mean_c(aux residual)) ||^2: public data only. (Matching
means instead, i.e. dividing this loss by g^2, learnt far slower at the reference learning rate:
67.0% vs 76.0% test accuracy after 500 iterations in our measurements.) An exponential moving
average of the images is what gets evaluated and exported.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from distiller_node.aux_prior import AuxPrior, split_statistic
from distiller_node.config import OptimisationConfig
from distiller_node.network_cache import NetworkCache
from distiller_node.signal_store import Signals
from shared.compute.networks import image_chunk, pass_chunk
from shared.compute.statistic import class_sums, per_example_statistic
from shared.compute.subspace import FINGERPRINT_TOL
from shared.progress import progress_bar
from shared.run_choices import INITS


def _quadrants(h: int, w: int) -> list[tuple[slice, slice]]:
    """PEA's layout: the four (rows, columns) boxes of a stored image, in the order images are read from it."""
    hh, hw = h // 2, w // 2
    return [(slice(0, hh), slice(0, hw)), (slice(0, hh), slice(hw, w)), (slice(hh, h), slice(0, hw)),
            (slice(hh, h), slice(hw, w))]  # fmt: skip


def decode_pea(images: torch.Tensor) -> torch.Tensor:
    """PEA: read every stored image as four quadrants, each upsampled to full size."""
    n, c, h, w = images.shape
    quads = [images[:, :, rows, cols] for rows, cols in _quadrants(h, w)]
    up = [F.interpolate(q, size=(h, w), mode="bilinear", align_corners=False) for q in quads]
    return torch.stack(up, dim=1).reshape(n * 4, c, h, w)


def encode_pea(images: torch.Tensor) -> torch.Tensor:
    """PEA's packing, the layout ``decode_pea`` reads: every four images (in order) shrunk into one stored
    image's quadrants, so a start from real images is four of them at half size per stored image."""
    n, c, h, w = images.shape
    if n % 4:
        raise ValueError(f"PEA packs four images a stored image; got {n}")
    groups = images.reshape(n // 4, 4, c, h, w)
    out = torch.empty(n // 4, c, h, w, dtype=images.dtype)
    for q, (rows, cols) in enumerate(_quadrants(h, w)):
        size = (rows.stop - rows.start, cols.stop - cols.start)
        out[:, :, rows, cols] = F.interpolate(groups[:, q], size=size, mode="bilinear", antialias=True)
    return out


# Where a class has fewer auxiliary images than a PEA start takes, each is used again moved by one pixel
# (down and right, then right, then down): at half size these are distinct images, a start's copies
# otherwise would stay equal (every image of a class sees the same augmentation and the same loss).
PEA_START_SHIFTS = ((0, 0), (1, 1), (0, 1), (1, 0))


def pea_start(images: torch.Tensor, count: int) -> torch.Tensor:
    """``count`` full-size images for ``encode_pea`` from one class's auxiliary ``images``: each image as it
    is, then (only as many as needed) each again at the next of ``PEA_START_SHIFTS``; up to 4 per image."""
    n, _, h, w = images.shape
    if count > len(PEA_START_SHIFTS) * n:
        least = -(-count // len(PEA_START_SHIFTS))
        raise ValueError(f"a PEA start of {count} images needs at least {least} images, got {n}")
    rounds = []
    for dy, dx in PEA_START_SHIFTS[: -(-count // n)]:
        rounds.append(F.pad(images, (dx, 0, dy, 0), mode="replicate")[..., :h, :w] if dy or dx else images)
    return torch.cat(rounds)[:count]


def training_images(stored: torch.Tensor, labels: torch.Tensor, pea: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The images (and labels) a model trains on, from what is stored."""
    if not pea:
        return stored, labels
    return decode_pea(stored), labels.repeat_interleave(4)


@dataclass
class SyntheticState:
    images: torch.Tensor  # stored (possibly PEA-packed) images, the optimised parameter
    ema: torch.Tensor
    labels: torch.Tensor
    iteration: int
    losses: list[float]


def initial_state(
    num_classes: int,
    ipc: int,
    image_shape: tuple[int, ...],
    seed: int,
    init: str = "noise",
    aux: tuple[torch.Tensor, torch.Tensor] | None = None,
    pea: bool = False,
) -> SyntheticState:
    """Synthetic images start from N(0, 1) noise or from public auxiliary images, never from private ones.

    ``aux`` is the public auxiliary set (normalised images, labels), needed for ``init="aux"``; a class needs
    ipc of them. With ``pea`` each stored image starts as four auxiliary images at half size
    (``encode_pea``): 4 x ipc distinct ones where a class has them, else moved copies (``pea_start``).
    """
    labels = torch.arange(num_classes).repeat_interleave(ipc)
    if init == "noise":
        g = torch.Generator().manual_seed(seed)
        images = torch.randn(num_classes * ipc, *image_shape, generator=g)
    elif init == "aux":
        if aux is None:
            raise ValueError("init 'aux' needs the public auxiliary images")
        aux_x, aux_y = aux
        picks = []
        for c in range(num_classes):
            idx = torch.nonzero(aux_y == c).flatten()[: 4 * ipc if pea else ipc]
            if len(idx) < ipc:
                raise ValueError(
                    f"init 'aux' needs {ipc} auxiliary images of class {c}, there are {len(idx)}: "
                    "give more auxiliary images (--aux-per-class) or start from noise (--init noise)"
                )
            picks.append(pea_start(aux_x[idx], 4 * ipc) if pea else aux_x[idx])
        images = torch.cat(picks)
        if pea:
            images = encode_pea(images)
    else:
        raise ValueError(f"unknown init {init!r}; choose one of {', '.join(INITS)}")
    return SyntheticState(images, images.clone(), labels, 0, [])


class Distiller:
    def __init__(
        self,
        signals: Signals,
        cache: NetworkCache,
        augmentation: str,
        clip_norm: float,
        cfg: OptimisationConfig,
        fingerprint_tol: float = FINGERPRINT_TOL,
        prior: AuxPrior | None = None,
    ):
        self.signals = signals
        self.prior = prior
        self.cache = cache
        self.signal = cache.signal
        self.augmentation = augmentation
        self.clip_norm = clip_norm
        self.cfg = cfg
        self.fingerprint_tol = fingerprint_tol
        self.device = cache.device
        self.group_sizes = signals.expected_counts.view(-1, 1).to(self.device)
        self.targets = signals.noisy_sums.double().to(self.device)

    def _draw(self, draw: int):
        net, subspace, fingerprint = self.cache.get_with_fingerprint(self.signals.network_seeds[draw])
        # Before any use of the draw: its owners' bases must be this one (k numbers compared per step).
        self.signals.check_basis(draw, fingerprint, self.fingerprint_tol)
        return net, subspace

    def _statistics(self, net, subspace, images: torch.Tensor, labels: torch.Tensor, draw: int):
        """Per-example statistics in cache-sized chunks (``pass_chunk``), all on one graph: the same
        values and gradient as one pass (one augmentation seed gives every chunk the same transform).

        Returns (statistics, residuals or None without the prior, training labels).
        """
        train_x, train_y = training_images(images, labels, self.cfg.pea)
        n = train_x.shape[0]
        chunk = pass_chunk(net.spec, self.device, self.cfg.activation_budget_mb, backward=True, most=max(1, n))
        seed, prior = self.signals.augment_seeds[draw], self._prior_on(subspace)
        stats, residuals = [], []
        for i in range(0, n, chunk):
            x, y = train_x[i : i + chunk], train_y[i : i + chunk]
            args = (x, seed, self.augmentation, self.clip_norm, y, self.signal, self.cfg.precision)
            if prior:
                stat, residual = split_statistic(net, subspace, *args)
                residuals.append(residual)
            else:
                stat = per_example_statistic(net, subspace, *args)
            stats.append(stat)
        residual = (residuals[0] if len(residuals) == 1 else torch.cat(residuals)) if prior else None
        return (stats[0] if len(stats) == 1 else torch.cat(stats)), residual, train_y

    def _prior_on(self, subspace) -> bool:
        """Whether this draw's loss has the prior's term: only where a projection leaves directions out."""
        return self.prior is not None and subspace is not None

    def _prior_gap(self, residual_sums: torch.Tensor, rescale: torch.Tensor, net, subspace, draw: int) -> torch.Tensor:
        """g_c (mean_c(residual) - target_c); the prior adds weight x its squared norm (rescale = g_c / count_c)."""
        target = self.prior.target(
            draw,
            net,
            subspace,
            self.signals.augment_seeds[draw],
            self.augmentation,
            self.clip_norm,
            self.signal,
            self.cfg.precision,
        )
        return residual_sums * rescale - target * self.group_sizes

    def _rescale(self, labels: torch.Tensor) -> torch.Tensor:
        """g_c / (synthetic examples of class c): what turns a synthetic class sum into a group's."""
        num_classes = self.targets.shape[1]
        train_y = labels.repeat_interleave(4) if self.cfg.pea else labels
        counts = torch.bincount(train_y, minlength=num_classes).clamp_min(1).double().view(-1, 1)
        return self.group_sizes / counts

    def loss(self, images: torch.Tensor, labels: torch.Tensor, draw: int) -> torch.Tensor:
        net, subspace = self._draw(draw)
        num_classes, rescale = self.targets.shape[1], self._rescale(labels)
        stats, residual, train_y = self._statistics(net, subspace, images, labels, draw)
        loss = (class_sums(stats, train_y, num_classes) * rescale - self.targets[draw]).square().sum()
        if residual is not None:
            gap = self._prior_gap(class_sums(residual, train_y, num_classes), rescale, net, subspace, draw)
            loss = loss + self.prior.weight * gap.square().sum()
        return loss

    def step(self, images: torch.Tensor, labels: torch.Tensor, draw: int) -> float:
        """The loss, with its gradient accumulated into ``images.grad``.

        When one pass over the whole synthetic set would exceed the activation budget, the set goes
        through in chunks: a first pass without a graph gives the class sums and so dL/d(sums); a
        second pass backpropagates each chunk's sums against that. The gradient is the same as one
        pass's (the loss depends on the images only through the class sums, and the prior's term
        through the class means of the residuals).
        """
        net, subspace = self._draw(draw)
        per_stored = 4 if self.cfg.pea else 1
        chunk = max(
            1, image_chunk(net.spec, self.cfg.activation_budget_mb, most=images.shape[0] * per_stored) // per_stored
        )
        if chunk >= images.shape[0]:
            loss = self.loss(images, labels, draw)
            loss.backward()
            return loss.item()
        parts = [slice(i, i + chunk) for i in range(0, images.shape[0], chunk)]
        num_classes = self.targets.shape[1]
        rescale, prior = self._rescale(labels), self._prior_on(subspace)
        sums, residual_sums = 0, 0
        with torch.no_grad():
            for p in parts:
                stats, residual, train_y = self._statistics(net, subspace, images[p], labels[p], draw)
                sums = sums + class_sums(stats, train_y, num_classes)
                if prior:
                    residual_sums = residual_sums + class_sums(residual, train_y, num_classes)
        gap = sums * rescale - self.targets[draw]
        weights = 2 * gap * rescale  # dL/d(class sums)
        loss = float(gap.square().sum())
        if prior:
            prior_gap = self._prior_gap(residual_sums, rescale, net, subspace, draw)
            prior_weights = 2 * self.prior.weight * prior_gap * rescale  # dL/d(residual class sums)
            loss += self.prior.weight * float(prior_gap.square().sum())
        for p in parts:
            stats, residual, train_y = self._statistics(net, subspace, images[p], labels[p], draw)
            part = (stats * weights[train_y]).sum()
            if prior:
                part = part + (residual * prior_weights[train_y]).sum()
            part.backward()
        return loss

    def run(self, state: SyntheticState, checkpoint: Path | None = None, show_progress: bool = True) -> SyntheticState:
        """Optimise on the cache's device; the state returned (and every checkpoint) is on the CPU."""
        cfg = self.cfg
        device = self.device
        state = SyntheticState(
            state.images.to(device), state.ema.to(device), state.labels.to(device), state.iteration, state.losses
        )
        images = state.images.clone().requires_grad_(True)
        opt = torch.optim.SGD([images], lr=cfg.lr, momentum=cfg.momentum)
        picker = torch.Generator().manual_seed(cfg.seed + 1)
        draw = 0
        if checkpoint is not None and checkpoint.exists():
            saved = torch.load(checkpoint, weights_only=False, map_location=device)
            images.data.copy_(saved["images"])
            ema, labels = saved["ema"].to(device), saved["labels"].to(device)
            state = SyntheticState(images.detach(), ema, labels, saved["iteration"], saved["losses"])
            opt.load_state_dict(saved["optimizer"])
            picker.set_state(saved["picker"])
            draw = saved.get("draw", 0)
        ema = state.ema.clone()
        losses = list(state.losses)
        num_draws = self.targets.shape[0]
        bar = progress_bar(
            total=cfg.iterations, initial=state.iteration, desc="optimisation", unit="it", disable=not show_progress
        )
        it = state.iteration
        for it in range(state.iteration, cfg.iterations):
            if it % max(1, cfg.steps_per_draw) == 0:
                draw = int(torch.randint(num_draws, (1,), generator=picker))
            opt.zero_grad(set_to_none=True)
            loss = self.step(images, state.labels, draw)
            opt.step()
            with torch.no_grad():
                ema.mul_(cfg.ema_decay).add_(images.detach(), alpha=1 - cfg.ema_decay)
            losses.append(loss)
            bar.update(1)
            if it % 20 == 0:
                bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.4f}", cache=len(self.cache))
            if checkpoint is not None and (it + 1) % cfg.checkpoint_every == 0:
                self._save(checkpoint, images, ema, state.labels, it + 1, losses, opt, picker, draw)
        bar.close()
        final = SyntheticState(images.detach().cpu(), ema.cpu(), state.labels.cpu(), cfg.iterations, losses)
        if checkpoint is not None:
            self._save(checkpoint, images, ema, state.labels, cfg.iterations, losses, opt, picker, draw)
        return final

    @staticmethod
    def _save(path: Path, images, ema, labels, iteration, losses, opt, picker, draw: int) -> None:
        tmp = path.with_name(f".{path.name}.tmp")
        torch.save(
            {
                "images": images.detach().cpu(),
                "ema": ema.cpu(),
                "labels": labels.cpu(),
                "iteration": iteration,
                "losses": losses,
                "optimizer": opt.state_dict(),
                "picker": picker.get_state(),
                "draw": draw,
            },
            tmp,
        )
        tmp.replace(path)
