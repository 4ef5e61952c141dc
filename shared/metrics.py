"""Classification metrics of a model trained on a synthetic set, computed the same way wherever the
test images are: the distiller's public test set (``results.json``) or the owner's private held-out
split (``dpdistill owner-evaluate``, whose figures never leave the owner).

Accuracy alone hides what matters on imbalanced medical data, so this also gives balanced accuracy,
per-class recall and precision (sensitivity and specificity when there are two classes, the second
class being the positive one), macro AUROC (one-vs-rest on softmax scores) and the confusion matrix.
scikit-learn computes them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def classification_metrics(labels: np.ndarray, scores: np.ndarray, class_names: Sequence[str]) -> dict:
    """``labels`` [n] ints, ``scores`` [n, C] class probabilities (rows sum to 1)."""
    from sklearn.metrics import (
        accuracy_score,
        confusion_matrix,
        precision_recall_fscore_support,
        roc_auc_score,
    )

    labels = np.asarray(labels, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    classes = list(range(len(class_names)))
    predicted = scores.argmax(axis=1)
    precision, recall, _, support = precision_recall_fscore_support(
        labels, predicted, labels=classes, zero_division=0.0
    )
    present = sorted(set(labels.tolist()))
    auroc = None
    if len(present) == len(classes) and len(classes) >= 2:  # every class needs positives and negatives
        if len(classes) == 2:
            auroc = float(roc_auc_score(labels, scores[:, 1]))
        else:
            auroc = float(roc_auc_score(labels, scores, multi_class="ovr", average="macro", labels=classes))
    out = {
        "accuracy": float(accuracy_score(labels, predicted)),
        # mean recall over the classes the test set holds (scikit-learn's definition)
        "balanced_accuracy": float(np.mean(recall[present])) if present else 0.0,
        "macro_auroc": auroc,
        "per_class": {
            name: {"recall": float(recall[c]), "precision": float(precision[c]), "support": int(support[c])}
            for c, name in enumerate(class_names)
        },
        "confusion_matrix": confusion_matrix(labels, predicted, labels=classes).tolist(),  # rows: true class
        "class_names": list(class_names),
    }
    if len(classes) == 2:
        out["sensitivity"] = float(recall[1])  # positive class: the second name
        out["specificity"] = float(recall[0])
    return out


def mean_metrics(runs: Sequence[dict]) -> dict:
    """Scalars and per-class figures averaged over several trainings; confusion matrices summed."""
    first = runs[0]
    out = dict(first)
    for key in ("accuracy", "balanced_accuracy", "macro_auroc", "sensitivity", "specificity"):
        if key in first:
            values = [r[key] for r in runs]
            out[key] = None if any(v is None for v in values) else float(np.mean(values))
    out["per_class"] = {
        name: {
            "recall": float(np.mean([r["per_class"][name]["recall"] for r in runs])),
            "precision": float(np.mean([r["per_class"][name]["precision"] for r in runs])),
            "support": first["per_class"][name]["support"],
        }
        for name in first["per_class"]
    }
    out["confusion_matrix"] = np.sum([np.asarray(r["confusion_matrix"]) for r in runs], axis=0).tolist()
    out["trainings"] = len(runs)
    return out


def format_metrics(metrics: dict) -> str:
    lines = [
        f"accuracy {100 * metrics['accuracy']:.2f}%, balanced accuracy {100 * metrics['balanced_accuracy']:.2f}%"
        + (f", macro AUROC {metrics['macro_auroc']:.4f}" if metrics.get("macro_auroc") is not None else "")
    ]
    if "sensitivity" in metrics:
        lines.append(
            f"sensitivity {100 * metrics['sensitivity']:.2f}% ({metrics['class_names'][1]} positive), "
            f"specificity {100 * metrics['specificity']:.2f}%"
        )
    lines.append(f"  {'class':<24} {'recall':>8} {'precision':>10} {'support':>8}")
    for name, m in metrics["per_class"].items():
        lines.append(f"  {name:<24} {100 * m['recall']:>7.2f}% {100 * m['precision']:>9.2f}% {m['support']:>8}")
    return "\n".join(lines)


def plot_confusion(path: str | Path, metrics: dict, title: str) -> None:
    """Row-normalised confusion matrix (each true class sums to 1), with counts in the JSON."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(metrics["confusion_matrix"], dtype=np.float64)
    rows = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    names = metrics["class_names"]
    size = max(4.0, 0.5 * len(names) + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(rows, vmin=0, vmax=1, cmap="Blues")
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    if len(names) <= 20:
        for i in range(len(names)):
            for j in range(len(names)):
                ax.text(j, i, f"{rows[i, j]:.2f}", ha="center", va="center", fontsize=6,
                        color="white" if rows[i, j] > 0.5 else "black")  # fmt: skip
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
