"""`dpdistill simulate` on a user's own images: RGB class folders and a CSV manifest, not Fashion-MNIST."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deploy.cli import main
from owner_node.config import OwnerConfig

COLOURS = {"red": (200, 40, 40), "green": (40, 200, 40), "blue": (40, 40, 200), "grey": (128, 128, 128)}


def write_folder(root: Path, per_class: int, seed: int, size: int = 40) -> None:
    """Class-coloured noisy RGB photos of another size than the run's (they are resized and cropped)."""
    g = np.random.default_rng(seed)
    for name, colour in COLOURS.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = np.clip(g.normal(colour, 40, (size, size + 8, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels, "RGB").save(root / name / f"{i}.png")


def small_run(tmp_path: Path, data: Path, aux: Path, test: Path | None) -> list[str]:
    args = ["simulate", "--out", str(tmp_path / "run"), "--data", str(data), "--aux", str(aux)]
    args += ["--test", str(test)] if test is not None else []
    return args + [
        "--image-size", "32", "--channels", "3", "--preset", "quick", "--epsilon", "5", "--ipc", "2",
        "--group-size", "8", "--draws", "20", "--draws-per-request", "10", "--subspace-dim", "8",
        "--iterations", "200", "--eval-runs", "1", "--eval-epochs", "60", "--no-progress",
    ]  # fmt: skip


def test_simulate_on_an_rgb_folder_learns_far_above_chance(tmp_path: Path) -> None:
    write_folder(tmp_path / "private", 160, seed=1)
    write_folder(tmp_path / "aux", 10, seed=2)
    write_folder(tmp_path / "test", 10, seed=3)
    assert main(small_run(tmp_path, tmp_path / "private", tmp_path / "aux", tmp_path / "test")) == 0
    out = tmp_path / "run" / "distiller"
    results = json.loads((out / "results.json").read_text())
    assert results["test_accuracy"]["mean"] > 0.6, results["test_accuracy"]  # chance is 0.25
    assert results["epsilon_prv"] <= 5.0
    blob = torch.load(out / "synthetic.pt", weights_only=True)
    assert blob["images"].shape == (8, 3, 32, 32) and tuple(blob["class_names"]) == ("blue", "green", "grey", "red")
    owner = OwnerConfig.load(tmp_path / "run" / "owner" / "owner.toml")
    assert (owner.data_source, owner.image_size, owner.channels) == ("image-folder", 32, 3)
    report = json.loads((out / "privacy_report.json").read_text())
    assert report["image_shape"] == [3, 32, 32]


def test_simulate_on_a_csv_manifest_without_a_test_set_skips_evaluation(tmp_path: Path) -> None:
    write_folder(tmp_path / "images", 160, seed=4)
    write_folder(tmp_path / "aux", 10, seed=5)
    rows = ["path,label,patient_id"] + [
        f"images/{name}/{i}.png,{name},p{i // 3}" for name in COLOURS for i in range(160)
    ]
    (tmp_path / "export.csv").write_text("\n".join(rows) + "\n")
    assert main(small_run(tmp_path, tmp_path / "export.csv", tmp_path / "aux", None)) == 0
    results = json.loads((tmp_path / "run" / "distiller" / "results.json").read_text())
    assert results["test_accuracy"] is None and results["test_images"] == 0
    assert (tmp_path / "run" / "distiller" / "synthetic_grid.png").stat().st_size > 0


def test_simulate_refuses_mismatched_or_missing_public_sets(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    write_folder(tmp_path / "private", 5, seed=1, size=16)
    assert main(["simulate", "--out", str(tmp_path / "a"), "--data", str(tmp_path / "private")]) == 2
    assert "--aux" in capsys.readouterr().err
    (tmp_path / "aux").mkdir()
    for name in ("red", "green", "blue", "purple"):
        (tmp_path / "aux" / name).mkdir()
        Image.new("RGB", (16, 16)).save(tmp_path / "aux" / name / "0.png")
    args = ["simulate", "--out", str(tmp_path / "b"), "--data", str(tmp_path / "private"), "--aux"]
    args += [str(tmp_path / "aux"), "--image-size", "16", "--channels", "3", "--subspace-dim", "2"]
    assert main(args) == 2
    assert "class" in capsys.readouterr().err
