"""Membership inference against the synthetic set: what an attacker learns from a model trained on it.

A black-box loss attack: a record the model was (indirectly) trained on tends to get a lower loss.
Scores are the negative cross-entropy of a ConvNet trained on the released synthetic set, on the
owner's private records (members) and on held-out records (non-members). Reported as AUC and TPR at
1% FPR for the private run, a near-non-private run (the owner's smallest noise, sigma 0.3), and a
ConvNet trained on the members themselves, which shows what the attack achieves when there is
something to find. This needs the private data, so the owner's security team runs it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from deploy.public_sets import PublicSets
from deploy.run_settings import RunSettings
from deploy.simulation import owner_dirs, simulate
from shared.accounting import MAX_EPSILON
from shared.compute.networks import NetworkSpec
from shared.datasets import to_float
from shared.evaluation import accuracy, train_once
from shared.evaluation_config import EvaluationConfig
from shared.images.npz import load_npz
from shared.images.source import ImageSource

NEAR_NON_PRIVATE_EPSILON = MAX_EPSILON  # the planner's noise floor (sigma 0.3) binds long before this


@dataclass(frozen=True)
class AttackResult:
    auc: float
    tpr_at_1pct_fpr: float
    test_accuracy: float
    roc_fpr: list[float]
    roc_tpr: list[float]


def loss_scores(net: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, chunk: int = 500) -> np.ndarray:
    """Higher means 'more likely a member': the negative per-example loss."""
    net.eval()
    out = []
    with torch.inference_mode():
        for i in range(0, images.shape[0], chunk):
            out.append(-F.cross_entropy(net(images[i : i + chunk]), labels[i : i + chunk], reduction="none"))
    return torch.cat(out).numpy()


def roc(members: np.ndarray, non_members: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """ROC curve (thresholds at every score) and its AUC, ties counted as half."""
    scores = np.concatenate([members, non_members])
    is_member = np.concatenate([np.ones(len(members)), np.zeros(len(non_members))])
    order = np.argsort(-scores, kind="stable")
    tpr = np.concatenate([[0.0], np.cumsum(is_member[order]) / len(members)])
    fpr = np.concatenate([[0.0], np.cumsum(1 - is_member[order]) / len(non_members)])
    ranks = _midranks(scores)
    auc = (ranks[: len(members)].sum() - len(members) * (len(members) + 1) / 2) / (len(members) * len(non_members))
    return fpr, tpr, float(auc)


def _midranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    sorted_x = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sorted_x[j + 1] == sorted_x[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def tpr_at(fpr: np.ndarray, tpr: np.ndarray, target_fpr: float) -> float:
    return float(tpr[fpr <= target_fpr].max())


def attack(
    net: torch.nn.Module, members: tuple[torch.Tensor, torch.Tensor], non_members: tuple[torch.Tensor, torch.Tensor]
) -> AttackResult:
    fpr, tpr, auc = roc(loss_scores(net, *members), loss_scores(net, *non_members))
    keep = np.unique(np.linspace(0, len(fpr) - 1, 400).astype(int))  # enough points for a plot
    return AttackResult(
        auc=auc,
        tpr_at_1pct_fpr=tpr_at(fpr, tpr, 0.01),
        test_accuracy=accuracy(net, *non_members),
        roc_fpr=fpr[keep].tolist(),
        roc_tpr=tpr[keep].tolist(),
    )


def membership_benchmark(
    out: Path,
    members: int = 1000,
    epsilon: float = RunSettings.epsilon,
    preset: str = "quick",
    group_size: float = 4.0,
    draws: int | None = None,
    eval_epochs: int = 100,
    eval_width: int = 64,
    seed: int = 0,
    show_progress: bool = True,
    public: PublicSets | None = None,
    private: ImageSource | None = None,
) -> dict:
    """Distil at ``epsilon`` and near-non-privately from the same members; attack a model of each.

    Members are ``members`` records drawn (public seed) from ``private`` (default: Fashion-MNIST's
    training set); non-members come from the public test set, which must then be given.
    """
    public = public or PublicSets(aux_per_class=20)
    out = Path(out)
    t0 = time.perf_counter()
    eval_cfg = EvaluationConfig(runs=1, epochs=eval_epochs, width=eval_width, seed=seed + 1000)
    runs = {"private": epsilon, "near_non_private": NEAR_NON_PRIVATE_EPSILON}
    results: dict = {"members": members, "preset": preset, "group_size": group_size, "runs": {}}
    _, held_out = public.load(show_progress)
    if held_out is None:
        raise ValueError("the attack needs non-members: give a public test set (--test) with --aux")
    non_member_set = held_out.subset(torch.arange(min(members, len(held_out))))
    member_x = member_y = non_members = None
    for name, eps in runs.items():
        run = RunSettings(preset=preset, epsilon=eps, group_size=group_size, seed=seed, eval_runs=1, draws=draws)
        cfg = run.distiller_config()
        cfg = replace(cfg, evaluation=replace(cfg.evaluation, epochs=eval_epochs, width=eval_width))
        summary = simulate(out / name, cfg, public, private, private_subset=members, show_progress=show_progress)
        member_set = load_npz(owner_dirs(out / name, 1)[0] / "private.npz")
        blob = torch.load(out / name / "distiller" / "synthetic.pt", weights_only=True)
        norm = tuple(blob["normalization"])  # the owner's published constants
        member_x, member_y = to_float(member_set.images, norm), member_set.labels
        non_members = (to_float(non_member_set.images, norm), non_member_set.labels)
        spec = NetworkSpec.for_images(eval_width, tuple(blob["images"].shape[1:]), len(blob["class_names"]))
        net = train_once(blob["images"], blob["labels"], spec, eval_cfg, eval_cfg.seed)
        result = attack(net, (member_x, member_y), non_members)
        results["runs"][name] = result.__dict__ | {"epsilon": summary.get("epsilon_prv")}
    # The attack's power when the model has seen the members themselves.
    spec = NetworkSpec.for_images(eval_width, tuple(member_x.shape[1:]), len(held_out.class_names))
    net = train_once(member_x, member_y, spec, eval_cfg, eval_cfg.seed)
    results["runs"]["trained_on_members"] = attack(net, (member_x, member_y), non_members).__dict__ | {"epsilon": None}
    results["wall_s"] = time.perf_counter() - t0
    (out / "membership.json").write_text(json.dumps(results, indent=2))
    _plot(results, out / "membership.png")
    return results


def _plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 5))
    for name, r in results["runs"].items():
        eps = f", eps {r['epsilon']:.2f}" if r["epsilon"] is not None else ""
        label = f"{name}{eps}: AUC {r['auc']:.3f}, TPR@1% {r['tpr_at_1pct_fpr']:.3f}"
        ax.plot(np.maximum(r["roc_fpr"], 1e-4), r["roc_tpr"], label=label)
    ax.plot([1e-4, 1], [1e-4, 1], "k:", label="chance")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(f"loss-based membership inference, {results['members']} members")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def format_membership(results: dict) -> str:
    lines = [f"MEMBERSHIP INFERENCE (loss attack, {results['members']} members vs as many non-members)"]
    for name, r in results["runs"].items():
        eps = f"{r['epsilon']:.3f}" if r["epsilon"] is not None else "none"
        lines.append(
            f"  {name:<20} epsilon {eps:>8}  AUC {r['auc']:.3f}  TPR at 1% FPR {r['tpr_at_1pct_fpr']:.3f}  "
            f"(model test accuracy {100 * r['test_accuracy']:.1f}%)"
        )
    return "\n".join(lines)
