"""Owner-side evaluation: does a synthetic set work on *this* hospital's data?

The cloud has no private test set. The owner keeps a held-out split (``[data] holdout``) that no
release ever samples, trains ConvNets on the synthetic set and tests them there. The figures are
computed on private data and are not differentially private, so they stay at the owner: written
beside its ledger, never sent to the distiller.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from owner_node.config import OwnerConfig
from owner_node.data import load_owner_images
from shared.compute.device import resolve_device
from shared.evaluation import evaluate
from shared.evaluation_config import EvaluationConfig
from shared.images.classes import check_same_classes
from shared.metrics import plot_confusion

NOTICE = (
    "These figures are computed on the owner's private held-out images and are NOT differentially "
    "private: keep them inside the owner's network (they are not sent to the distiller)."
)


def default_out(config: OwnerConfig, synthetic: Path) -> Path:
    return Path(config.ledger_path).parent / "owner_evaluation" / Path(synthetic).stem


def owner_evaluate(
    config: OwnerConfig,
    synthetic: str | Path,
    cfg: EvaluationConfig,
    out: str | Path | None = None,
    progress: bool = True,
) -> dict:
    """Train on ``synthetic`` (a ``synthetic.pt``), test on the owner's held-out split; write JSON and PNG."""
    _, held = load_owner_images(config, progress)
    if held is None:
        raise ValueError(
            "owner-evaluate needs a held-out split that no release uses: set [data] holdout (e.g. 0.1) in the "
            "owner's config before the first release, so those images are never sampled"
        )
    blob = torch.load(synthetic, weights_only=True)
    images, labels = blob["images"], blob["labels"]
    class_names = tuple(blob["class_names"])
    check_same_classes(class_names, held, names=("synthetic set", "owner's held-out split"))
    if tuple(images.shape[1:]) != tuple(held.images.shape[1:]):
        raise ValueError(
            f"synthetic images are {tuple(images.shape[1:])}, the owner's {tuple(held.images.shape[1:])}: "
            "this synthetic set was not made for this owner's image_size and channels"
        )
    result = evaluate(
        images,
        labels,
        held.images,
        held.labels,
        len(class_names),
        cfg,
        progress,
        tuple(blob["normalization"]),
        class_names,
        device=resolve_device(config.device),
    )
    out = Path(out) if out is not None else default_out(config, Path(synthetic))
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    report = {
        "notice": NOTICE,
        "synthetic": str(Path(synthetic).resolve()),
        "held_out_images": len(held),
        "holdout": config.holdout,
        "accuracy": result.to_dict(),
        "metrics": result.metrics,
        "evaluation": {"runs": cfg.runs, "epochs": cfg.epochs, "width": cfg.width},
    }
    (out / "owner_evaluation.json").write_text(json.dumps(report, indent=2))
    title = f"owner's held-out split, {len(held)} images, {cfg.runs} trainings (kept at the owner)"
    plot_confusion(out / "confusion_matrix.png", result.metrics, title)
    report["out"] = str(out)
    return report
