"""Flower's simulation engine as the transport: same pipeline, owners as gRPC services. Slow (Ray)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deploy.cli import main
from owner_node.ledger import Ledger

pytestmark = pytest.mark.slow


def test_flower_simulation_runs_the_same_pipeline(tmp_path: Path) -> None:
    args = ["simulate", "--transport", "flower", "--out", str(tmp_path), "--owners", "2", "--preset", "quick"]
    args += ["--private-subset", "4000", "--draws", "20", "--draws-per-request", "10", "--iterations", "20"]
    assert main([*args, "--aux-per-class", "20", "--group-size", "5", "--eval-runs", "1", "--eval-epochs", "5"]) == 0
    results = json.loads((tmp_path / "distiller" / "results.json").read_text())
    assert set(results["epsilon_by_owner"]) == {"owner-1", "owner-2"}
    assert (tmp_path / "distiller" / "synthetic_grid.png").exists()
    for owner in ("owner-1", "owner-2"):
        ledger = Ledger(tmp_path / owner / "ledger.sqlite")
        rows = ledger.rows()
        ledger.close()
        assert len(rows) == 2 and sum(r.event.count for r in rows) == 20


KIP_TINY = {
    "kip-decoupled": ["--iterations", "10", "--eval-epochs", "2"],
    "kip-sync": ["--ipc", "1"],
}


@pytest.mark.parametrize("preset", sorted(KIP_TINY))
def test_flower_simulation_runs_dp_kip(tmp_path: Path, preset: str) -> None:
    """Both DP-KIP variants over Flower: the same requests reach the owner service and its ledger."""
    args = ["simulate", "--transport", "flower", "--out", str(tmp_path), "--preset", preset, "--init", "noise"]
    args += ["--private-subset", "2000", "--draws", "4", "--draws-per-request", "2", "--group-size", "2"]
    args += ["--aux-per-class", "20", "--eval-runs", "1", "--eval-epochs", "2", "--no-progress", *KIP_TINY[preset]]
    assert main(args) == 0
    out = tmp_path / "distiller"
    report = json.loads((out / "privacy_report.json").read_text())
    assert report["signal"] == ("kip" if preset == "kip-decoupled" else "kip-sync") and report["releases"] == 4
    results = json.loads((out / "results.json").read_text())
    assert "scattering" in results["krr_accuracy"]
    (ledger_path,) = tmp_path.glob("*/ledger.sqlite")
    ledger = Ledger(ledger_path)
    try:
        assert [e.count for e in ledger.events()] == [2, 2]
    finally:
        ledger.close()


def test_flower_simulation_on_a_users_images_with_its_own_public_sets(tmp_path: Path) -> None:
    """Over Flower, the owner reads its own folder and the distiller's public sets are the run
    config's (here scikit-learn's digits, not Fashion-MNIST)."""
    from deploy.example_images import write_example

    digits = tmp_path / "digits"
    write_example("digits", digits, image_size=32, channels=1, aux_per_class=10, show_progress=False)
    args = ["simulate", "--transport", "flower", "--out", str(tmp_path / "run"), "--preset", "quick"]
    args += ["--data", str(digits / "train"), "--aux", str(digits / "aux.csv"), "--test", str(digits / "test")]
    args += ["--image-size", "32", "--channels", "1", "--epsilon", "8", "--group-size", "5", "--ipc", "2"]
    args += ["--draws", "20", "--draws-per-request", "10", "--subspace-dim", "16", "--iterations", "150"]
    assert main([*args, "--eval-runs", "1", "--eval-epochs", "40"]) == 0
    results = json.loads((tmp_path / "run" / "distiller" / "results.json").read_text())
    assert results["test_accuracy"]["mean"] > 0.3, results["test_accuracy"]  # chance is 0.1
    assert results["test_images"] == json.loads((digits / "example.json").read_text())["images"]["test"]
    report = json.loads((tmp_path / "run" / "distiller" / "privacy_report.json").read_text())
    assert report["image_shape"] == [1, 32, 32]
