"""Evaluation: train a ConvNet from scratch on the synthetic set, test on held-out public images.

DP-KIP sets are also scored by their method's own protocol, kernel ridge regression on scattering
features with the synthetic set as support (``krr_accuracy``).

Several trainings with different seeds give a mean and standard deviation. The auxiliary images
used for subspaces are not in the test set.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm

from shared.augmentation import DEFAULT_STRATEGY, augment
from shared.kip import DEFAULT_REG, centred_one_hot, krr_predict
from shared.networks import DEFAULT_ACTIVATION_BUDGET_MB, NetworkSpec, build_network, depth_for_image_size, image_chunk
from shared.scattering import scattering_features
from shared.subspace import Subspace


@dataclass(frozen=True)
class EvaluationConfig:
    runs: int = 3
    epochs: int = 300
    width: int = 128
    depth: int | None = None  # None: by image size (shared.networks.depth_for_image_size)
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 256
    augmentation: str = DEFAULT_STRATEGY
    seed: int = 1000
    # Activation memory of one pass: larger batches are split into micro-batches whose gradients add
    # up to the batch's (exact: the network has no batch statistics).
    activation_budget_mb: float = DEFAULT_ACTIVATION_BUDGET_MB


@dataclass(frozen=True)
class EvaluationResult:
    accuracies: list[float]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.accuracies)

    @property
    def std(self) -> float:
        return statistics.pstdev(self.accuracies) if len(self.accuracies) > 1 else 0.0

    def to_dict(self) -> dict:
        return {"mean": self.mean, "std": self.std, "runs": self.accuracies}


def accuracy(
    net: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, budget_mb: float = DEFAULT_ACTIVATION_BUDGET_MB
) -> float:
    net.eval()
    chunk = image_chunk(net.spec, budget_mb, most=256)
    correct = 0
    with torch.inference_mode():
        for i in range(0, images.shape[0], chunk):
            correct += int((net(images[i : i + chunk]).argmax(1) == labels[i : i + chunk]).sum())
    return correct / max(1, images.shape[0])


def train_once(
    images: torch.Tensor, labels: torch.Tensor, spec: NetworkSpec, cfg: EvaluationConfig, seed: int, bar=None
) -> torch.nn.Module:
    net = build_network(spec, seed)
    net.train()
    opt = torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[cfg.epochs // 2], gamma=0.1)
    g = torch.Generator().manual_seed(seed)
    n = images.shape[0]
    micro = image_chunk(spec, cfg.activation_budget_mb, most=cfg.batch_size)
    for _ in range(cfg.epochs):
        order = torch.randperm(n, generator=g)
        for i in range(0, n, cfg.batch_size):
            idx = order[i : i + cfg.batch_size]
            aug_seed = int(torch.randint(2**62, (1,), generator=g))
            x = augment(images[idx], aug_seed, cfg.augmentation, per_example=True)
            y = labels[idx]
            opt.zero_grad(set_to_none=True)
            for j in range(0, len(idx), micro):  # the batch's mean loss, one micro-batch at a time
                loss = F.cross_entropy(net(x[j : j + micro]), y[j : j + micro], reduction="sum") / len(idx)
                loss.backward()
            opt.step()
        sched.step()
        if bar is not None:
            bar.update(1)
    return net


def evaluate(
    images: torch.Tensor,
    labels: torch.Tensor,
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int,
    cfg: EvaluationConfig,
    show_progress: bool = True,
) -> EvaluationResult:
    depth = cfg.depth if cfg.depth is not None else depth_for_image_size(images.shape[2])
    spec = NetworkSpec(
        width=cfg.width, depth=depth, channels=images.shape[1], image_size=images.shape[2], num_classes=num_classes
    )
    accs = []
    images = images.detach()
    with tqdm(
        total=cfg.runs * cfg.epochs, desc=f"evaluation ({cfg.runs} trainings)", unit="ep", disable=not show_progress
    ) as bar:
        for r in range(cfg.runs):
            net = train_once(images, labels, spec, cfg, cfg.seed + r, bar)
            accs.append(accuracy(net, test_images, test_labels, cfg.activation_budget_mb))
            bar.set_postfix(acc=f"{statistics.fmean(accs):.4f}")
    return EvaluationResult(accs)


def krr_accuracy(
    images: torch.Tensor,
    labels: torch.Tensor,
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int,
    projection: Subspace | None = None,
    reg: float = DEFAULT_REG,
) -> float:
    """Test accuracy of KRR (inner-product kernel on scattering features, optionally projected)."""
    phi_s = scattering_features(images.detach())
    phi_t = scattering_features(test_images)
    if projection is not None:
        phi_s, phi_t = projection.project(phi_s), projection.project(phi_t)
    code = centred_one_hot(torch.arange(num_classes), num_classes)
    pred = krr_predict(phi_s.double(), code[labels], phi_t.double(), reg)
    return float((pred.argmax(dim=1) == test_labels).double().mean())
