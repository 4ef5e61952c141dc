"""Evaluation: train a ConvNet from scratch on the synthetic set, test it on held-out images.

Both nodes evaluate: the distiller on its public test set (``results.json``), the owner on its own
held-out split (``dpdistill owner-evaluate``, figures kept at the owner), so the code is shared.

DP-KIP sets are also scored by their method's own protocol, kernel ridge regression on scattering
features with the synthetic set as support (``krr_accuracy``).

Several trainings with different seeds give a mean and standard deviation. The auxiliary images
used for subspaces are not in the test set.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from shared.compute.augmentation import augment
from shared.compute.device import autocast
from shared.compute.kip import DEFAULT_REG, centred_one_hot, krr_predict
from shared.compute.networks import (
    DEFAULT_ACTIVATION_BUDGET_MB,
    NetworkSpec,
    build_network,
    pass_chunk,
)
from shared.compute.scattering import scattering_features
from shared.compute.subspace import Subspace
from shared.datasets import to_float
from shared.evaluation_config import EvaluationConfig
from shared.metrics import classification_metrics, mean_metrics
from shared.progress import progress_bar


@dataclass(frozen=True)
class EvaluationResult:
    accuracies: list[float]
    metrics: dict | None = None  # shared.metrics over the trainings (balanced accuracy, per class, AUROC, ...)
    # Accuracy of the same trainings on further sets (e.g. a public validation split used to choose settings).
    other_accuracies: dict[str, list[float]] = field(default_factory=dict)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.accuracies)

    @property
    def std(self) -> float:
        return statistics.pstdev(self.accuracies) if len(self.accuracies) > 1 else 0.0

    def to_dict(self) -> dict:
        return {"mean": self.mean, "std": self.std, "runs": self.accuracies}

    def other(self, name: str) -> dict:
        """``to_dict`` for a further set's accuracies."""
        return EvaluationResult(self.other_accuracies[name]).to_dict()


def predict(
    net: torch.nn.Module,
    images: torch.Tensor,
    budget_mb: float = DEFAULT_ACTIVATION_BUDGET_MB,
    normalization: tuple[float, float] | None = None,
    precision: str = "float32",
) -> torch.Tensor:
    """Class probabilities [n, C] on the CPU; uint8 ``images`` (with their ``normalization``) become floats a
    chunk at a time on the network's device, so a large high-resolution test set is never held in float32."""
    if images.dtype == torch.uint8 and normalization is None:
        raise ValueError("uint8 test images need their normalization")
    net.eval()
    device = next(net.parameters()).device
    chunk = pass_chunk(net.spec, device, budget_mb, most=256)
    parts = []
    with torch.inference_mode():
        for i in range(0, images.shape[0], chunk):
            x = images[i : i + chunk].to(device)
            x = to_float(x, normalization) if x.dtype == torch.uint8 else x
            with autocast(device, precision):
                logits = net(x)
            parts.append(torch.softmax(logits.double(), dim=1).cpu())
    return torch.cat(parts) if parts else torch.zeros(0, net.spec.num_classes, dtype=torch.float64)


def accuracy(
    net: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    budget_mb: float = DEFAULT_ACTIVATION_BUDGET_MB,
    normalization: tuple[float, float] | None = None,
    precision: str = "float32",
) -> float:
    scores = predict(net, images, budget_mb, normalization, precision)
    return float((scores.argmax(1) == labels.cpu()).double().mean()) if len(labels) else 0.0


def train_once(
    images: torch.Tensor,
    labels: torch.Tensor,
    spec: NetworkSpec,
    cfg: EvaluationConfig,
    seed: int,
    bar=None,
    device: torch.device | str = "cpu",
) -> torch.nn.Module:
    device = torch.device(device)
    net = build_network(spec, seed, device)
    images, labels = images.to(device), labels.to(device)
    net.train()
    opt = torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[cfg.epochs // 2], gamma=0.1)
    g = torch.Generator().manual_seed(seed)
    n = images.shape[0]
    micro = pass_chunk(spec, device, cfg.activation_budget_mb, backward=True, most=cfg.batch_size)
    for _ in range(cfg.epochs):
        order = torch.randperm(n, generator=g).to(device)
        for i in range(0, n, cfg.batch_size):
            idx = order[i : i + cfg.batch_size]
            aug_seed = int(torch.randint(2**62, (1,), generator=g))
            x = augment(images[idx], aug_seed, cfg.augmentation, per_example=True)
            y = labels[idx]
            opt.zero_grad(set_to_none=True)
            for j in range(0, len(idx), micro):  # the batch's mean loss, one micro-batch at a time
                with autocast(device, cfg.precision):
                    logits = net(x[j : j + micro])
                loss = F.cross_entropy(logits.float(), y[j : j + micro], reduction="sum") / len(idx)
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
    normalization: tuple[float, float] | None = None,
    class_names: Sequence[str] | None = None,
    other_sets: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
    device: torch.device | str = "cpu",
) -> EvaluationResult:
    """``test_images``: normalised floats, or uint8 with their ``normalization`` (converted per chunk).
    With ``class_names``, the result also holds ``shared.metrics`` figures averaged over the trainings.
    ``other_sets``: name -> (images, labels) that the same trained networks are also scored on."""
    spec = NetworkSpec.for_images(cfg.width, tuple(images.shape[1:]), num_classes, cfg.depth)
    accs, runs = [], []
    others: dict[str, list[float]] = {name: [] for name in other_sets or {}}
    images = images.detach()
    with progress_bar(
        total=cfg.runs * cfg.epochs, desc=f"evaluation ({cfg.runs} trainings)", unit="ep", disable=not show_progress
    ) as bar:
        for r in range(cfg.runs):
            net = train_once(images, labels, spec, cfg, cfg.seed + r, bar, device)
            scores = predict(net, test_images, cfg.activation_budget_mb, normalization, cfg.precision)
            accs.append(float((scores.argmax(1) == test_labels).double().mean()))
            if class_names is not None:
                runs.append(classification_metrics(test_labels.numpy(), scores.numpy(), class_names))
            for name, (x, y) in (other_sets or {}).items():
                others[name].append(accuracy(net, x, y, cfg.activation_budget_mb, normalization, cfg.precision))
            bar.set_postfix(acc=f"{statistics.fmean(accs):.4f}")
    return EvaluationResult(accs, mean_metrics(runs) if runs else None, others)


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
