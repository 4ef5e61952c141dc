"""The authors' per-draw and per-iteration work, done the straightforward way, as the speed baseline.

What ``dpdistill-bench speed`` sets beside this project's own stages, in the same process, on the same
data and networks, so the ratio holds on whatever machine runs it:

- per draw: build the draw's network and keep it (every network kept, as the authors' code does);
  recompute the PCA of the auxiliary embeddings for it (``torch.linalg.svd``); then, class by class,
  a fixed-size group of private images: augment, embed, project, clip, sum, add noise;
- per iteration: for the drawn network, class by class, push that class's synthetic images through
  the same augmentation, embedding, projection and clip, and add the squared distance of the
  rescaled sum to the noisy one; one backward pass and one SGD step.

The statistics are the same function as the project's (``shared.compute.statistic``): only the way the
work is organised differs, and the network pools with PyTorch's ``nn.AvgPool2d`` as the authors'
ConvNet does (the project's own ``AvgPool2x2`` computes the same means with faster CPU kernels).
The noise here comes from a seeded ``torch.Generator``: this is timing code, never a release.
"""

from __future__ import annotations

import torch
from torch import nn

from shared.compute.augmentation import augment
from shared.compute.networks import AvgPool2x2, ConvNet, NetworkSpec, build_network, freeze
from shared.compute.statistic import clip_rows


def authors_network(spec: NetworkSpec, seed: int) -> ConvNet:
    """The seed's network (same weights) with the authors' pooling layer."""
    net = build_network(spec, seed)
    for i, layer in enumerate(net.features):
        if isinstance(layer, AvgPool2x2):
            net.features[i] = nn.AvgPool2d(kernel_size=2, stride=2)
    return net


class StraightforwardDistillation:
    def __init__(self, spec: NetworkSpec, aux: torch.Tensor, k: int, clip_norm: float = 1.0, sigma: float = 1.25):
        self.spec, self.aux, self.k = spec, aux, k
        self.clip_norm, self.sigma = clip_norm, sigma
        self.kept: list[tuple[ConvNet, torch.Tensor, torch.Tensor]] = []  # (network, mean, basis) per draw
        self.targets: list[torch.Tensor] = []  # noisy class sums [C, k] per draw

    def project(self, net: ConvNet, mean: torch.Tensor, basis: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return clip_rows((net.embed(x) - mean) @ basis, self.clip_norm)

    def draw(
        self, net_seed: int, aug_seed: int, strategy: str, by_class: list[torch.Tensor], group: int, g: torch.Generator
    ) -> None:
        net = freeze(authors_network(self.spec, net_seed))
        with torch.no_grad():
            emb = net.embed(self.aux)
            mean = emb.mean(0)
            _, _, vh = torch.linalg.svd(emb - mean, full_matrices=False)
            basis = vh[: self.k].T.contiguous()
            sums = []
            for images in by_class:
                idx = torch.randperm(len(images), generator=g)[:group]
                z = self.project(net, mean, basis, augment(images[idx], aug_seed, strategy))
                noise = torch.randn(self.k, generator=g, dtype=torch.float64) * self.sigma * self.clip_norm
                sums.append(z.sum(0) + noise)
        self.kept.append((net, mean, basis))
        self.targets.append(torch.stack(sums))

    def iteration(
        self, images: torch.Tensor, opt: torch.optim.Optimizer, draw: int, aug_seed: int, strategy: str, group: float
    ) -> float:
        """One step on the synthetic ``images`` [C, ipc, ...] against draw ``draw``."""
        net, mean, basis = self.kept[draw]
        opt.zero_grad(set_to_none=True)
        loss = torch.zeros((), dtype=torch.float64)
        for c in range(images.shape[0]):
            z = self.project(net, mean, basis, augment(images[c], aug_seed, strategy))
            loss = loss + (z.sum(0) * (group / images.shape[1]) - self.targets[draw][c]).square().sum()
        loss.backward()
        opt.step()
        return float(loss.detach())
