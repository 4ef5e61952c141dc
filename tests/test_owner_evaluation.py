"""Owner-side evaluation on a held-out split that no release uses, and the metrics both sides report."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from deploy.cli import main
from owner_node.config import OwnerConfig, write_config
from owner_node.data import holdout_split, load_owner_images
from owner_node.service import OwnerService
from shared.metrics import classification_metrics, mean_metrics
from tests.conftest import make_owner_config, random_image_set


def test_metrics_match_hand_computed_values_and_name_sensitivity_for_two_classes() -> None:
    labels = np.array([0, 0, 0, 1, 1])
    scores = np.array([[0.9, 0.1], [0.8, 0.2], [0.4, 0.6], [0.3, 0.7], [0.6, 0.4]])  # predicted 0 0 1 1 0
    m = classification_metrics(labels, scores, ("normal", "finding"))
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["sensitivity"] == pytest.approx(1 / 2) and m["specificity"] == pytest.approx(2 / 3)
    assert m["balanced_accuracy"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert m["per_class"]["finding"]["precision"] == pytest.approx(1 / 2)
    assert m["macro_auroc"] == pytest.approx(5 / 6)  # 5 of the 6 (finding, normal) pairs ranked right
    assert m["confusion_matrix"] == [[2, 1], [1, 1]]
    both = mean_metrics([m, m])
    assert both["accuracy"] == m["accuracy"] and both["confusion_matrix"] == [[4, 2], [2, 2]]
    absent = classification_metrics(np.array([0, 0]), np.array([[0.9, 0.1], [0.2, 0.8]]), ("a", "b"))
    assert absent["macro_auroc"] is None  # undefined without both classes


def test_holdout_is_per_class_fixed_and_never_reaches_the_service(tmp_path: Path) -> None:
    data = random_image_set(80, seed=1)
    release, held = holdout_split(data, 0.25, seed=7)
    assert len(held) == 20 and torch.bincount(data.labels[held]).tolist() == [5, 5, 5, 5]
    assert set(release.tolist()).isdisjoint(held.tolist()) and len(release) + len(held) == 80
    assert torch.equal(holdout_split(data, 0.25, seed=7)[1], held)  # the same images across restarts
    config = replace(make_owner_config(tmp_path), holdout=0.25, holdout_seed=7)
    service = OwnerService(config)
    try:
        assert service.describe().class_counts == (15, 15, 15, 15)  # releases see only the rest
        held_images = data.images[held].flatten(1)
        served = service.data.images.flatten(1)
        assert not (served[:, None, :] == held_images[None, :, :]).all(dim=2).any()
    finally:
        service.close()
    with pytest.raises(ValueError, match="too few"):
        holdout_split(random_image_set(8, seed=1), 0.1, seed=0)


def test_owner_evaluate_writes_metrics_beside_the_ledger_and_says_they_stay(tmp_path: Path, capsys) -> None:
    config = replace(make_owner_config(tmp_path / "owner"), holdout=0.25)
    write_config(tmp_path / "owner" / "owner.toml", config)
    loaded = OwnerConfig.load(tmp_path / "owner" / "owner.toml")
    assert loaded.holdout == 0.25
    _, held = load_owner_images(loaded, progress=False)
    blob = {
        "images": torch.randn(8, 1, 16, 16),
        "labels": torch.arange(4).repeat_interleave(2),
        "class_names": list(held.class_names),
        "normalization": [0.5, 0.25],
    }
    torch.save(blob, tmp_path / "synthetic.pt")
    args = ["owner-evaluate", str(tmp_path / "synthetic.pt"), "--config", str(tmp_path / "owner" / "owner.toml")]
    assert main([*args, "--eval-runs", "2", "--eval-epochs", "3", "--eval-width", "8", "--no-progress"]) == 0
    said = capsys.readouterr().out
    assert "NOT differentially private" in said and "balanced accuracy" in said
    out = tmp_path / "owner" / "owner_evaluation" / "synthetic"
    report = json.loads((out / "owner_evaluation.json").read_text())
    assert report["held_out_images"] == 20 and set(report["metrics"]["per_class"]) == set(held.class_names)
    assert sum(map(sum, report["metrics"]["confusion_matrix"])) == 2 * 20
    assert (out / "confusion_matrix.png").stat().st_size > 0
    # Without a held-out split there is nothing private to test on that releases have not used.
    no_holdout = tmp_path / "plain"
    write_config(no_holdout / "owner.toml", make_owner_config(no_holdout))
    assert main(["owner-evaluate", str(tmp_path / "synthetic.pt"), "--config", str(no_holdout / "owner.toml")]) == 2
    assert "holdout" in capsys.readouterr().err


def test_distiller_results_carry_the_same_metrics() -> None:
    from shared.evaluation import evaluate
    from shared.evaluation_config import EvaluationConfig

    g = torch.Generator().manual_seed(0)
    test = random_image_set(40, seed=3)
    result = evaluate(
        torch.randn(8, 1, 16, 16, generator=g),
        torch.arange(4).repeat_interleave(2),
        test.images,
        test.labels,
        4,
        EvaluationConfig(runs=2, epochs=2, width=8),
        show_progress=False,
        normalization=(0.5, 0.25),
        class_names=test.class_names,
    )
    assert result.metrics is not None and result.metrics["accuracy"] == pytest.approx(result.mean)
    assert result.metrics["trainings"] == 2 and "macro_auroc" in result.metrics


def test_compare_runs_puts_per_class_recall_side_by_side(tmp_path: Path) -> None:
    labels = np.array([0, 0, 1, 1, 2])
    good = np.eye(3)[labels] * 0.9 + 0.1 / 3  # rows sum to 1
    bad = np.eye(3)[[0, 0, 0, 1, 0]] * 0.9 + 0.1 / 3
    for name, scores in (("after", good), ("before", bad)):
        metrics = classification_metrics(labels, scores, ("a", "b", "c"))
        (tmp_path / f"{name}.json").write_text(json.dumps({"test_metrics": metrics}))
    args = ["compare-runs", "--out", str(tmp_path / "cmp"), "--run", f"before={tmp_path / 'before.json'}"]
    assert main([*args, "--run", f"after={tmp_path / 'after.json'}"]) == 0
    table = json.loads((tmp_path / "cmp" / "recall.json").read_text())
    assert table["before"]["recall"] == {"a": 1.0, "b": 0.5, "c": 0.0} and table["after"]["recall"]["c"] == 1.0
    assert (tmp_path / "cmp" / "recall.png").stat().st_size > 0
    assert main(["compare-runs", "--out", str(tmp_path / "x"), "--run", "no-path"]) == 2
