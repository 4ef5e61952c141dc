"""The public prior: hold the synthetic set to the auxiliary set where the owners' releases say nothing.

SER projects each draw's statistic onto k public directions before the clip, so the releases
constrain the synthetic images only there; in the remaining directions of the embedding they are free
to drift. Matching the public auxiliary set's class means in exactly those directions (same network,
same augmentation, the same per-example clip factor) keeps them near a public estimate instead.
The auxiliary set is public, so this costs no privacy: the owners release nothing more, and the
fitted set stays post-processing of their releases plus public data.

Measured (issue 29, Fashion-MNIST IPC 10, docs/bench/issue29_levers.md): without noise the pipeline
rises from 80.4% to 82.1% on validation with weight 1, as much as dropping the projection (82.0%),
while the releases keep their k = 100 numbers per class.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from distiller_node.config import OptimisationConfig
from distiller_node.network_cache import NetworkCache
from shared.compute.networks import pass_chunk
from shared.compute.signals import SignalKind, get_signal_kind
from shared.compute.statistic import class_sums, clip_factors, describe_augmented, scale_rows
from shared.compute.subspace import Subspace


def prior_applies(weight: float, subspace_dim: int) -> bool:
    """Asked for, and a projection that leaves something out (without one the releases cover everything)."""
    return weight > 0 and subspace_dim > 0


def prior_words(weight: float) -> str:
    """What the run's report says about the prior (the synthetic set is fitted to public data as well)."""
    return (
        f"in the directions each draw's projection leaves out, the synthetic class means were also fitted "
        f"(weight {weight:g}) to the public auxiliary set's, under the same network, augmentation and clip factor: "
        "public data only, no privacy cost"
    )


def split_statistic(
    net: nn.Module | None,
    subspace: Subspace,
    images: torch.Tensor,
    augment_seed: int,
    strategy: str,
    clip_norm: float,
    labels: torch.Tensor | None,
    signal: str,
    precision: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(the clipped projected statistic, the residual the projection leaves out, scaled by the same clip factor).

    The first is ``shared.compute.statistic.per_example_statistic`` for kinds that do not expand (what
    the owners release); both are float64 and differentiable in ``images``.
    """
    if type(get_signal_kind(signal)).expand is not SignalKind.expand:
        raise ValueError(f"the auxiliary prior needs a statistic that is the projection itself; {signal} expands it")
    vectors = describe_augmented(net, images, augment_seed, strategy, labels, signal, precision)
    projected = subspace.project(vectors)
    factors = clip_factors(projected, clip_norm)  # 0 for a row with a non-finite entry
    # The first is clip_rows(projected), computed once: the same factors scale both parts.
    return scale_rows(projected, factors), scale_rows(subspace.residual(vectors), factors)


class AuxPrior:
    """Per draw, the auxiliary set's class means of ``split_statistic``'s residual (the public target).

    Computed on first use of a draw and kept within ``max_bytes`` (least recently used first out), so
    gradient signals, whose residuals are as long as the network has parameters, stay bounded too.
    """

    def __init__(
        self,
        aux_images: torch.Tensor,
        aux_labels: torch.Tensor,
        num_classes: int,
        weight: float,
        max_bytes: int,
        activation_budget_mb: float,
    ) -> None:
        if weight <= 0:
            raise ValueError(f"the auxiliary prior's weight must be positive, got {weight}")
        missing = sorted(set(range(num_classes)) - set(aux_labels.long().unique().tolist()))
        if missing:
            raise ValueError(f"the auxiliary prior needs auxiliary images of every class; none of class(es) {missing}")
        self.aux_images = aux_images
        self.aux_labels = aux_labels.long()
        self.num_classes = num_classes
        self.weight = weight
        self.max_bytes = max_bytes
        self.activation_budget_mb = activation_budget_mb
        self._targets: OrderedDict[int, torch.Tensor] = OrderedDict()
        self._bytes = 0

    @classmethod
    def for_run(
        cls, opt: OptimisationConfig, subspace_dim: int, cache: NetworkCache, aux_labels: torch.Tensor, num_classes: int
    ) -> AuxPrior | None:
        """The prior a run's settings ask for, on the cache's device and within its memory (None: none)."""
        if not prior_applies(opt.aux_prior, subspace_dim):
            return None
        labels = aux_labels.to(cache.device)
        return cls(cache.aux_images, labels, num_classes, opt.aux_prior, opt.cache_mb * 2**20, opt.activation_budget_mb)

    def target(
        self,
        draw: int,
        net: nn.Module,
        subspace: Subspace,
        augment_seed: int,
        strategy: str,
        clip_norm: float,
        signal: str,
        precision: str,
    ) -> torch.Tensor:
        """[num_classes, d] float64: the auxiliary residuals' class means under this draw's network and augmentation."""
        if draw in self._targets:
            self._targets.move_to_end(draw)
            return self._targets[draw]
        n = self.aux_images.shape[0]
        chunk = pass_chunk(net.spec, self.aux_images.device, self.activation_budget_mb, backward=False, most=n)
        total = None
        with torch.no_grad():
            for lo in range(0, n, chunk):
                x, y = self.aux_images[lo : lo + chunk], self.aux_labels[lo : lo + chunk]
                # One augmentation seed gives every chunk the same transform, as in the releases' passes.
                _, residual = split_statistic(net, subspace, x, augment_seed, strategy, clip_norm, y, signal, precision)
                part = class_sums(residual, y, self.num_classes)
                total = part if total is None else total + part
        counts = torch.bincount(self.aux_labels, minlength=self.num_classes).to(total.dtype).view(-1, 1)
        target = total / counts.to(total.device)
        self._targets[draw] = target
        self._bytes += target.numel() * target.element_size()
        while self._bytes > self.max_bytes and len(self._targets) > 1:
            _, old = self._targets.popitem(last=False)
            self._bytes -= old.numel() * old.element_size()
        return target
