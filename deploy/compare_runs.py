"""Per-class recall of several runs side by side, as one JSON and one PNG.

Reads what the runs wrote (a run's ``distiller/results.json`` or an ``evaluate --json`` file: both
carry ``test_metrics``) and draws each class's recall per run, so
the effect of a change on the rare classes shows at a glance (``dpdistill compare-runs``).
"""

from __future__ import annotations

import json
from pathlib import Path


def load_metrics(path: str | Path) -> dict:
    data = json.loads(Path(path).read_text())
    metrics = data.get("test_metrics")
    if metrics is None:
        raise ValueError(f"{path} has no test_metrics (write it with this version's simulate or evaluate --json)")
    return metrics


def compare_runs(runs: dict[str, str | Path], out_json: str | Path, out_png: str | Path, title: str = "") -> dict:
    """``runs``: label -> JSON file. Writes the per-class table (JSON) and a grouped bar chart (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    metrics = {label: load_metrics(path) for label, path in runs.items()}
    classes = list(next(iter(metrics.values()))["per_class"])
    table = {
        label: {
            "accuracy": m["accuracy"],
            "balanced_accuracy": m["balanced_accuracy"],
            "macro_auroc": m.get("macro_auroc"),
            "recall": {c: m["per_class"][c]["recall"] for c in classes},
            "support": {c: m["per_class"][c]["support"] for c in classes},
            "source": str(runs[label]),
        }
        for label, m in metrics.items()
    }
    Path(out_json).write_text(json.dumps(table, indent=2))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.8 * len(classes) + 2), 4))
    width = 0.8 / len(table)
    x = np.arange(len(classes))
    for i, (label, row) in enumerate(table.items()):
        name = f"{label} (acc {100 * row['accuracy']:.1f}%, bal. {100 * row['balanced_accuracy']:.1f}%)"
        ax.bar(x + (i - (len(table) - 1) / 2) * width, [row["recall"][c] for c in classes], width, label=name)
    ax.set_xticks(x, classes, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("recall on the test set")
    ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_png, dpi=120)
    plt.close(fig)
    return table
